// Labelling page: leases tasks over /v1, shows one image at a time, posts good/bad/skip.
// Keys: G/1 good, B/2 bad, S/3 skip, U/Backspace undo, R retry a failed image. No dependencies.
//
// Rules that keep a person's key presses honest over an hour of labelling:
// - a key applies to the sample on screen when it was pressed, and to nothing else: the label is
//   queued for that sample id (the outbox) and the next, already loaded image is shown at once,
//   so keys pressed while earlier labels are still being saved are kept, in order;
// - while no image is on screen (the next one is still loading), label keys are refused, and the
//   page says so: never applied to an image the person has not seen;
// - an image that fails to load is said to have failed; it can be skipped (S) or retried (R);
// - a label is shown as saved only once the service acknowledged it (it is durable by then);
//   network errors and 503s are retried; the outbox is kept in order;
// - when nothing is left, the page asks for new tasks every `?poll=` seconds (default 5).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const base = new URL(".", location.href);  // works under a route prefix too
  const KEYS = { g: "good", 1: "good", b: "bad", 2: "bad", s: "skip", 3: "skip" };
  const POLL_MS = Math.max(200, 1000 * (Number(params.get("poll")) || 5));
  const RECENT = 5;
  let token = params.get("token") || localStorage.getItem("t2i.token") || "";
  let wanted = params.get("labeller") || localStorage.getItem("t2i.labeller") || "";
  let labeller = "";      // who the service says we label as
  let kind = "";          // token kind: labeller (own account), shared, admin
  const queue = [];       // leased tasks not shown yet: {task, image: Promise<{el, url} | {error}>}
  let current = null;     // {task, el?, url?, error?, shownAt}
  const outbox = [];      // actions not yet acknowledged: {kind: "label"|"undo", entry, body?}
  const recent = [];      // the last labels, newest first: {task, label, state, el?, url?, error?}
  let sending = false, advancing = false, refilling = null, timer = null;
  let session = 0, done = 0, remaining = 0, refused = 0;

  function status(msg) { $("status").textContent = msg; }
  function setState(s) { document.body.dataset.state = s; renderButtons(); }
  const state = () => document.body.dataset.state || "";

  class HttpError extends Error {
    constructor(status, msg) { super(msg); this.status = status; }
    get retry() { return [502, 503, 504].includes(this.status); }
  }

  async function api(method, path, body) {
    let resp;
    try {
      resp = await fetch(new URL(path, base), {
        method,
        headers: { Authorization: "Bearer " + token, ...(body ? { "Content-Type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
    } catch (e) {
      throw new HttpError(0, "cannot reach the service");
    }
    if (!resp.ok) {
      let detail = resp.statusText;
      try { detail = (await resp.json()).detail; } catch (e) { /* not JSON */ }
      if (typeof detail !== "string") detail = JSON.stringify(detail);
      if (resp.status === 401) showLogin("token rejected: " + detail);
      throw new HttpError(resp.status, resp.status + " " + detail);
    }
    return resp;
  }
  const retryable = (e) => e instanceof HttpError && (e.status === 0 || e.retry);

  function progress() {
    $("done").textContent = String(done);
    $("remaining").textContent = String(remaining);
    $("session").textContent = String(session);
    document.body.dataset.outbox = String(outbox.length);
    $("pending").hidden = !outbox.length;
    $("pending").textContent = "· saving " + outbox.length + "…";
  }

  // -- images: every leased task's image is fetched and decoded as soon as it is leased ------------
  async function loadImage(task) {
    let url;
    try {
      const blob = await (await api("GET", "v1/tasks/" + encodeURIComponent(task.sample_id) + "/image")).blob();
      url = URL.createObjectURL(blob);
      const el = new Image();
      el.src = url;
      await el.decode();
      return { el, url };
    } catch (e) {
      if (url) URL.revokeObjectURL(url);
      return { error: e instanceof HttpError ? e.message : "the file is not an image the browser can show" };
    }
  }

  function placeImage(el, sampleId) {  // the one #image on screen; an empty, hidden one if none
    const img = el || document.createElement("img");
    img.id = "image";
    img.alt = "image to label";
    img.hidden = !el;
    img.dataset.sampleId = sampleId || "";
    $("image").replaceWith(img);
  }

  function show(task, loaded) {
    current = { task, ...loaded, shownAt: performance.now() };
    placeImage(loaded.el, task.sample_id);
    $("prompt").textContent = task.prompt;
    $("waiting").hidden = true;
    $("image-error").hidden = !loaded.error;
    if (loaded.error) {
      $("image-error").textContent = "This image could not be loaded (" + loaded.error + "). " +
        "Press S to skip it, or R to try again.";
      setState("failed");
    } else {
      setState("ready");
    }
  }

  function clearScreen(prompt) {
    current = null;
    placeImage(null, "");
    $("image-error").hidden = true;
    $("prompt").textContent = prompt;
  }

  // -- leases ------------------------------------------------------------------------------------
  function refill() {  // one lease request at a time; callers share it
    refilling = refilling || (async () => {
      try {
        const body = { n: 5 };
        if (kind !== "labeller" && labeller) body.labeller = labeller;
        const got = await (await api("POST", "v1/tasks/next", body)).json();
        if (!outbox.length) { done = got.done; remaining = got.remaining; }  // else: ours are newer
        const known = new Set(queue.map((q) => q.task.sample_id));
        if (current) known.add(current.task.sample_id);
        for (const a of outbox) known.add(a.entry.task.sample_id);
        for (const t of got.tasks) if (!known.has(t.sample_id)) queue.push({ task: t, image: loadImage(t) });
        progress();
      } finally { refilling = null; }
    })();
    return refilling;
  }

  async function advance() {  // show the next task, or wait for new ones
    advancing = true;
    setState("loading");
    clearScreen("loading the next image…");
    try {
      if (!queue.length) await refill();
      const next = queue.shift();
      if (!next) { idle(); return; }
      show(next.task, await next.image);
      if (queue.length < 2) refill().catch((e) => status("could not lease more tasks: " + e.message));
    } catch (e) {
      status("error: " + e.message + " — trying again");
      setState("error");
      if (e.status !== 401) schedule(advance);
    } finally {
      advancing = false;
      renderButtons();
    }
  }

  function idle() {
    clearScreen("All done — no images left to label.");
    $("waiting").hidden = false;
    setState("idle");
    schedule(poll);
  }

  async function poll() {
    try {
      await refill();
      if (queue.length) { advance(); return; }
    } catch (e) {
      status("could not reach the service (" + e.message + "); trying again");
    }
    if (state() === "idle") schedule(poll);
  }

  function schedule(fn) { clearTimeout(timer); timer = setTimeout(fn, POLL_MS); }

  // -- actions: bound to the sample on screen, sent in order --------------------------------------
  function refuse(msg) {
    refused += 1;
    document.body.dataset.refused = String(refused);
    status(msg);
  }

  function label(value) {
    const s = state();
    if (advancing || !current || (s !== "ready" && !(s === "failed" && value === "skip"))) {
      refuse(s === "failed" ? "This image did not load: press S to skip it or R to retry — key ignored."
        : "No image on screen yet — key ignored.");
      return;
    }
    const entry = { task: current.task, label: value, state: "saving", el: current.el, url: current.url };
    const body = { sample_id: current.task.sample_id, label: value,
                   time_spent_ms: Math.round(performance.now() - current.shownAt) };
    if (kind !== "labeller" && labeller) body.labeller = labeller;
    outbox.push({ kind: "label", entry, body });
    remember(entry);
    session += 1; done += 1; remaining = Math.max(0, remaining - 1);
    status("labelled " + value + ": " + entry.task.prompt);
    progress();
    flush();
    advance();
  }

  function undo(entry) {
    entry = entry || recent.find((e) => e.state === "saving" || e.state === "saved");
    if (!entry || advancing || !["saving", "saved"].includes(entry.state)) {
      refuse(entry ? "Wait for the image before undoing." : "Nothing to undo.");
      return;
    }
    const i = outbox.findIndex((a) => a.entry === entry);
    if (i > 0 || (i === 0 && !sending)) {  // never sent: nothing to undo on the service
      outbox.splice(i, 1);
      entry.state = "undone";
    } else {  // saved, or on its way: undo it once it is there
      outbox.push({ kind: "undo", entry });
      entry.state = "undoing";
    }
    session = Math.max(0, session - 1); done = Math.max(0, done - 1); remaining += 1;
    clearTimeout(timer);
    if (current) queue.unshift({ task: current.task, image: Promise.resolve(current) });
    status("undone: " + entry.task.prompt);
    show(entry.task, entry.error ? { error: entry.error } : { el: entry.el, url: entry.url });
    progress();
    renderRecent();
    flush();
  }

  async function flush() {  // send the outbox in order; keep what the network refused
    if (sending) return;
    sending = true;
    try {
      while (outbox.length) {
        const a = outbox[0];
        const sid = encodeURIComponent(a.entry.task.sample_id);
        const q = kind !== "labeller" && labeller ? "?labeller=" + encodeURIComponent(labeller) : "";
        try {
          if (a.kind === "label") {
            const got = await (await api("POST", "v1/labels", a.body)).json();
            if (got.label !== a.body.label) status("You had labelled this one " + got.label + " before; that label stays.");
            a.entry.label = got.label;
            if (a.entry.state === "saving") a.entry.state = "saved";  // not if an undo is already queued
          } else {
            await api("DELETE", "v1/labels/" + sid + q);
            a.entry.state = "undone";
          }
          outbox.shift();
        } catch (e) {
          if (e.status === 401) return;  // the login form is up; the outbox is kept for the new token
          if (retryable(e)) {
            status("saving… (" + e.message + "; retrying)");
            await new Promise((r) => setTimeout(r, 1000));
            continue;
          }
          outbox.shift();
          if (a.kind === "label" && a.entry.state === "saving") {
            session = Math.max(0, session - 1); done = Math.max(0, done - 1);
          }
          a.entry.state = "failed";
          a.entry.error = e.message;
          status((a.kind === "label" ? "not saved: " : "not undone: ") + e.message);
        }
        progress();
        renderRecent();
      }
    } finally {
      sending = false;
      progress();
    }
  }

  function remember(entry) {
    recent.unshift(entry);
    for (const old of recent.splice(RECENT)) {
      const inUse = (current && current.url === old.url) || recent.some((e) => e.url === old.url);
      if (old.url && !inUse && !queue.some((q) => q.task.sample_id === old.task.sample_id)) URL.revokeObjectURL(old.url);
    }
    renderRecent();
  }

  // -- rendering -----------------------------------------------------------------------------------
  const STATES = { saving: "saving…", saved: "saved", undoing: "undoing…", undone: "undone", failed: "not saved" };

  function renderRecent() {
    const list = $("recent-list");
    list.replaceChildren(...recent.map((e) => {
      const li = document.createElement("li");
      li.dataset.sampleId = e.task.sample_id;
      li.dataset.state = e.state;
      if (e.url) { const t = new Image(); t.src = e.url; t.alt = ""; t.className = "thumb"; li.append(t); }
      const lab = document.createElement("b");
      lab.className = "lab " + e.label;
      lab.textContent = e.label;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = e.task.prompt;
      const st = document.createElement("span");
      st.className = "st";
      st.textContent = STATES[e.state] + (e.error && e.state === "failed" ? " (" + e.error + ")" : "");
      li.append(lab, text, st);
      if (e.state === "saving" || e.state === "saved") {
        const b = document.createElement("button");
        b.className = "undo-one";
        b.textContent = "undo";
        b.addEventListener("click", () => undo(e));
        li.append(b);
      }
      return li;
    }));
    $("recent").hidden = !recent.length;
    renderButtons();
  }

  function renderButtons() {
    const s = state();
    $("good").disabled = $("bad").disabled = s !== "ready";
    $("skip").disabled = !(s === "ready" || s === "failed");
    $("retry").hidden = s !== "failed";
    $("undo").disabled = advancing || !recent.some((e) => e.state === "saving" || e.state === "saved");
  }

  async function retry() {
    if (state() !== "failed" || !current) return;
    const task = current.task;
    setState("loading");
    show(task, await loadImage(task));
  }

  // -- login ---------------------------------------------------------------------------------------
  function showLogin(msg) {
    clearTimeout(timer);
    $("work").hidden = true;
    $("login").hidden = false;
    $("token-input").value = token;
    $("labeller-input").value = wanted;
    setState("login");
    status(msg || "");
  }

  async function start() {
    $("login").hidden = true;
    $("work").hidden = false;
    try {  // an account's token labels as its owner, whatever name was typed; a shared one as the name
      let me = await (await api("GET", "v1/me")).json();
      if (me.token !== "labeller" && wanted) {
        me = await (await api("GET", "v1/me?labeller=" + encodeURIComponent(wanted))).json();
      } else if (wanted && wanted !== me.labeller) {
        status("this token belongs to " + me.labeller + "; labelling as " + me.labeller);
      }
      labeller = me.labeller;
      kind = me.token;
    } catch (e) {
      if (e.status !== 401) showLogin(e.message);  // a 401 has shown it already
      return;
    }
    $("who").textContent = labeller + (kind === "labeller" ? "" : " (" + kind + " token)");
    progress();
    flush();
    advance();
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token-input").value.trim();
    wanted = $("labeller-input").value.trim();
    localStorage.setItem("t2i.token", token);
    localStorage.setItem("t2i.labeller", wanted);
    start();
  });
  for (const id of ["good", "bad", "skip"]) $(id).addEventListener("click", () => label($(id).dataset.label));
  $("undo").addEventListener("click", () => undo());
  $("retry").addEventListener("click", retry);
  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
    if (!$("login").hidden) return;
    const key = ev.key.toLowerCase();
    if (KEYS[key]) { ev.preventDefault(); label(KEYS[key]); }
    else if (key === "u" || key === "backspace" || key === "z") { ev.preventDefault(); undo(); }
    else if (key === "r") { ev.preventDefault(); retry(); }
  });

  window.addEventListener("beforeunload", (ev) => {  // labels not yet acknowledged would be lost
    if (outbox.length) { ev.preventDefault(); ev.returnValue = ""; }
  });

  if (token) start(); else showLogin("enter your labelling token");
})();
