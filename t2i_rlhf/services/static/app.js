// Labelling page: leases tasks over /v1, shows one image at a time, posts good/bad/skip.
// Keys: G/1 good, B/2 bad, S/3 skip, U/Backspace undo. No dependencies, no CDN.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const base = new URL(".", location.href);  // works under a route prefix too
  const KEYS = { g: "good", 1: "good", b: "bad", 2: "bad", s: "skip", 3: "skip" };
  let token = params.get("token") || localStorage.getItem("t2i.token") || "";
  let labeller = params.get("labeller") || localStorage.getItem("t2i.labeller") || "";
  const queue = [];       // leased tasks not shown yet
  let current = null;     // {task, blobUrl, shownAt}
  let last = null;        // the last labelled task, for undo
  let busy = false;
  let done = 0;
  let remaining = 0;

  function status(msg) { $("status").textContent = msg; }

  async function api(method, path, body) {
    const resp = await fetch(new URL(path, base), {
      method,
      headers: { Authorization: "Bearer " + token, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    if (resp.status === 401) { showLogin("token rejected — enter a valid token"); throw new Error("401"); }
    if (!resp.ok) {
      let detail = resp.statusText;
      try { detail = JSON.stringify((await resp.json()).detail); } catch (e) { /* not JSON */ }
      throw new Error(resp.status + " " + detail);
    }
    return resp;
  }

  function progress() {
    $("done").textContent = String(done);
    $("remaining").textContent = String(remaining);
  }

  async function refill() {
    const body = { n: 5 };
    if (labeller) body.labeller = labeller;
    const got = await (await api("POST", "v1/tasks/next", body)).json();
    labeller = got.labeller;
    $("who").textContent = labeller;
    done = got.done;
    remaining = got.remaining;
    const known = new Set(queue.map((t) => t.sample_id).concat(current ? [current.task.sample_id] : []));
    for (const t of got.tasks) if (!known.has(t.sample_id)) queue.push(t);
    progress();
  }

  async function show(task) {
    const blob = await (await api("GET", "v1/tasks/" + encodeURIComponent(task.sample_id) + "/image")).blob();
    if (current) URL.revokeObjectURL(current.blobUrl);
    current = { task, blobUrl: URL.createObjectURL(blob), shownAt: performance.now() };
    const img = $("image");
    img.src = current.blobUrl;
    img.dataset.sampleId = task.sample_id;
    $("prompt").textContent = task.prompt;
    setButtons(true);
  }

  function setButtons(on) {
    for (const id of ["good", "bad", "skip"]) $(id).disabled = !on;
    $("undo").disabled = !last;
  }

  async function next() {
    if (queue.length < 2) await refill();
    const task = queue.shift();
    if (!task) {
      current = null;
      $("image").removeAttribute("src");
      $("image").dataset.sampleId = "";
      $("prompt").textContent = "All done — no images left to label.";
      setButtons(false);
      document.body.dataset.state = "idle";
      return;
    }
    await show(task);
    document.body.dataset.state = "ready";
  }

  async function run(fn) {  // one action at a time; keys pressed meanwhile are ignored
    if (busy) return;
    busy = true;
    document.body.dataset.state = "busy";
    try { await fn(); } catch (e) { status("error: " + e.message); document.body.dataset.state = "error"; }
    finally { busy = false; }
  }

  function label(value) {
    return run(async () => {
      if (!current) return;
      const spent = Math.round(performance.now() - current.shownAt);
      const body = { sample_id: current.task.sample_id, label: value, time_spent_ms: spent };
      if (labeller) body.labeller = labeller;
      await api("POST", "v1/labels", body);
      last = current.task;
      done += 1;
      remaining = Math.max(0, remaining - 1);
      progress();
      status("labelled " + value + ": " + last.prompt);
      await next();
    });
  }

  function undo() {
    return run(async () => {
      if (!last) return;
      const q = labeller ? "?labeller=" + encodeURIComponent(labeller) : "";
      await api("DELETE", "v1/labels/" + encodeURIComponent(last.sample_id) + q);
      if (current) queue.unshift(current.task);
      const again = last;
      last = null;
      done = Math.max(0, done - 1);
      remaining += 1;
      progress();
      status("undone: " + again.prompt);
      await show(again);
      document.body.dataset.state = "ready";
    });
  }

  function showLogin(msg) {
    $("work").hidden = true;
    $("login").hidden = false;
    $("token-input").value = token;
    $("labeller-input").value = labeller;
    status(msg || "");
  }

  function start() {
    $("login").hidden = true;
    $("work").hidden = false;
    run(next);
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token-input").value.trim();
    labeller = $("labeller-input").value.trim();
    localStorage.setItem("t2i.token", token);
    localStorage.setItem("t2i.labeller", labeller);
    start();
  });
  for (const id of ["good", "bad", "skip"]) $(id).addEventListener("click", () => label($(id).dataset.label));
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = ev.key.toLowerCase();
    if (KEYS[key]) { ev.preventDefault(); label(KEYS[key]); }
    else if (key === "u" || key === "backspace" || key === "z") { ev.preventDefault(); undo(); }
  });

  if (token) start(); else showLogin("enter your labelling token");
})();
