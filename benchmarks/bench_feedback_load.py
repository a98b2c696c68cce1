"""Load benchmark for the feedback service (issue 6), against a real server on 127.0.0.1.

1. Starts `python -m t2i_rlhf.services feedback serve` (uvicorn, one process) on a fresh SQLite
   file, publishes tasks, then posts single labels (POST /v1/labels, one label per request) from
   1, 8 and 32 concurrent keep-alive connections for a fixed time each: labels/s, p50/p99 latency.
   Optionally also batches of labels (POST /v1/labels/batch).
2. Crash: runs a load at 8 connections, `kill -9`s the server mid-run, restarts it on the same
   file and checks that every label that got a 2xx is in the store (exported over HTTP).
3. With --label-studio VENV (issue 25), first the same levels, same client code and one label per
   request against Label Studio (`label_studio_driver.py`: `label-studio start` on a fresh SQLite
   data dir, network calls off, one good/bad project, tasks imported over its API, a label is
   `POST /api/tasks/{id}/annotations`); then one table of both, ours / Label Studio per level,
   whether every 2xx is a stored annotation, and the journal mode / synchronous its SQLite runs.

The load generator is a minimal asyncio HTTP/1.1 client (no httpx) so that, on a small machine,
the client's own CPU cost disturbs the server as little as possible. Bounded: --seconds per level,
loopback only.

    nice -n 10 .venv/bin/python benchmarks/bench_feedback_load.py --seconds 5 --out bench.json
    make label-studio-venv  # once, with the network
    nice -n 10 .venv/bin/python benchmarks/bench_feedback_load.py --seconds 5 \\
        --label-studio .venv-label-studio --out bench-vs-label-studio.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import label_studio_driver as ls

from t2i_rlhf.samples import png_bytes
from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.local_server import free_port, wait_healthy
from t2i_rlhf.shapes import parse_prompt, render

logger = logging.getLogger("bench_feedback_load")
ADMIN, LAB = "bench-admin-token", "bench-labeller-token"
HOST = "127.0.0.1"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to report cost per label apart from
    how much of a contended CPU the server happened to get."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(db: Path, port: int, synchronous: str) -> subprocess.Popen:
    env = {**os.environ, "T2I_FEEDBACK_ADMIN_TOKEN": ADMIN, "T2I_FEEDBACK_SHARED_LABELLER_TOKENS": LAB}
    cmd = [
        sys.executable,
        "-m",
        "t2i_rlhf.services",
        "feedback",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--db",
        str(db),
        "--synchronous",
        synchronous,
        "--max-body-bytes",
        str(64 << 20),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(f"http://{HOST}:{port}", 60, proc)
    return proc


class Conn:
    """One keep-alive HTTP/1.1 connection; just enough protocol for JSON POSTs (reopened only if
    the server answers `Connection: close`)."""

    def __init__(self, port: int, auth: str = f"Bearer {LAB}") -> None:
        self.port, self.auth, self.reopens = port, auth, 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {self.auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        length, close = 0, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.close()
            self.reopens += 1
            await self.open()
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class Target:
    """A labelling server for the load generator: its port, the Authorization header, and how
    [(item, label, labeller), ...] becomes one POST (path, JSON body)."""

    name: str
    port: int
    auth: str
    request: Callable[[list[tuple]], tuple[str, dict]]


def ours_request(rows: list[tuple]) -> tuple[str, dict]:
    labels = [{"sample_id": s, "label": label, "labeller": who} for s, label, who in rows]
    return ("/v1/labels", labels[0]) if len(labels) == 1 else ("/v1/labels/batch", {"labels": labels})


def ours(port: int) -> Target:
    return Target("ours", port, f"Bearer {LAB}", ours_request)


async def run_load(
    target: Target,
    clients: int,
    seconds: float,
    sample_ids: list,
    tag: str,
    batch: int = 1,
    acked: dict | None = None,
) -> dict:
    """`clients` connections post labels (each its own labeller) until `seconds` pass or their
    samples run out. Every 2xx is recorded in `acked` if given."""
    latencies: list[float] = []
    errors = reopens = acknowledged = 0
    stop_at = time.monotonic() + seconds

    async def client(c: int) -> None:
        nonlocal errors, reopens, acknowledged
        conn = Conn(target.port, target.auth)
        await conn.open()
        who = f"{tag}-c{c}"
        try:
            for start in range(0, len(sample_ids), batch):
                if time.monotonic() >= stop_at:
                    return
                chunk = sample_ids[start : start + batch]
                rows = [(s, "good" if (i + c) % 2 else "bad", who) for i, s in enumerate(chunk, start)]
                path, body = target.request(rows)
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.post(path, json.dumps(body).encode())
                except (ConnectionError, asyncio.IncompleteReadError):
                    errors += 1
                    return
                latencies.append(time.perf_counter() - t0)
                if 200 <= status < 300:
                    acknowledged += len(rows)
                    if acked is not None:
                        for s, label, _ in rows:
                            acked[(s, who)] = label
                else:
                    errors += 1
        finally:
            reopens += conn.reopens
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [lat[0] if lat else 0] * 99
    return {
        "clients": clients,
        "batch": batch,
        "requests": len(lat),
        "labels": len(lat) * batch,
        "acknowledged": acknowledged,
        "errors": errors,
        "reopened_connections": reopens,
        "seconds": round(wall, 2),
        "labels_per_s": round(len(lat) * batch / wall, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


def measured(
    proc: subprocess.Popen, target: Target, clients: int, seconds: float, ids: list, tag: str, batch: int = 1
) -> dict:
    """run_load plus the CPU the server and this client spent: labels per server CPU-second is
    what the server sustains on one core of its own, whatever else the machine is running."""
    s0, c0 = cpu_seconds(proc.pid), time.process_time()
    r = asyncio.run(run_load(target, clients, seconds, ids, tag, batch=batch))
    server, client = cpu_seconds(proc.pid) - s0, time.process_time() - c0
    r["server_cpu_s"], r["client_cpu_s"] = round(server, 2), round(client, 2)
    r["server_cpu_ms_per_request"] = round(1000 * server / max(r["requests"], 1), 3)
    r["labels_per_server_cpu_s"] = round(r["labels"] / server, 1) if server else None
    return r


def publish(url: str, n: int, round_: int) -> list[str]:
    png = png_bytes(render(parse_prompt("two red circles"), 0))  # content does not matter here
    tasks = [
        {"sample_id": f"b{round_}-{i:06d}", "round": round_, "prompt": "two red circles", "image": png}
        for i in range(n)
    ]
    with FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(tasks, chunk_rows=5000)
    return [t["sample_id"] for t in tasks]


def crash_check(db: Path, port: int, synchronous: str, clients: int, kill_after: float) -> dict:
    url = f"http://{HOST}:{port}"
    proc = start_server(db, port, synchronous)
    ids = publish(url, 20_000, round_=99)
    acked: dict[tuple[str, str], str] = {}

    async def load_then_kill() -> dict:
        task = asyncio.create_task(run_load(ours(port), clients, 60, ids, "crash", acked=acked))
        await asyncio.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)  # mid-run: requests are in flight
        return await task

    load = asyncio.run(load_then_kill())
    proc.wait(timeout=10)
    proc = start_server(db, port, synchronous)
    try:
        with FeedbackClient(url, ADMIN) as admin:
            rows, _ = admin.export_labels(round=99)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    stored = {(r["sample_id"], r["labeller"]): r["label"] for r in rows}
    lost = sum(stored.get(k) != v for k, v in acked.items())
    return {
        "clients": clients,
        "killed_after_s": kill_after,
        "acknowledged": len(acked),
        "stored_after_restart": len(stored),
        "lost": lost,
        "in_flight_failures": load["errors"],
    }


def run_levels(proc: subprocess.Popen, target: Target, levels: list[int], seconds: float, ids: list) -> list[dict]:
    out = []
    for n in levels:
        r = measured(proc, target, n, seconds, ids, f"L{n}")
        logger.info(
            "%-12s %3d clients: %8.1f labels/s  p50 %6.2f ms  p99 %6.2f ms  (%d requests, %d errors, "
            "server CPU %.3f ms/request)",
            target.name,
            n,
            r["labels_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            r["requests"],
            r["errors"],
            r["server_cpu_ms_per_request"],
        )
        out.append(r)
    return out


def label_studio_run(venv: Path, data_dir: Path, levels: list[int], seconds: float, n_tasks: int) -> dict:
    """The same levels against Label Studio; then whether every 2xx is a row in its database, and
    the SQLite settings its connections commit with."""
    port = free_port()
    t0 = time.monotonic()
    proc = ls.start(venv, data_dir, port)
    started_s = round(time.monotonic() - t0, 1)
    try:
        ids = ls.setup(port, n_tasks, png_bytes(render(parse_prompt("two red circles"), 0)))
        target = Target("Label Studio", port, ls.auth_header(), ls.annotation_request)
        warm = asyncio.run(run_load(target, 4, 1.0, ids, "warmup"))
        runs = run_levels(proc, target, levels, seconds, ids)
        if any(r["requests"] >= r["clients"] * n_tasks for r in runs):
            logger.warning("Label Studio: a client ran out of its %d tasks; raise --ls-tasks", n_tasks)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    acked = warm["acknowledged"] + sum(r["acknowledged"] for r in runs)
    stored = ls.annotation_count(data_dir)
    return {
        "version": ls.version(venv),
        "server": "label-studio start (Django runserver, threaded, one process)",
        "jobs": "in RQ workers (a Redis on localhost:6379)" if ls.redis_listening() else "inside the request",
        "start_s": started_s,
        "tasks": n_tasks,
        "task_data": "image as a data: URL (the same 189-byte PNG our service is given)",
        "levels": runs,
        "acknowledged": acked,
        "stored": stored,
        "sqlite": ls.durability(venv, data_dir),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each level")
    p.add_argument("--batch", type=int, default=0, help="also measure batches of this size at 8 clients")
    p.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    p.add_argument("--kill-after", type=float, default=2.0, help="seconds into the crash run before kill -9")
    p.add_argument("--no-crash", action="store_true")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--label-studio",
        type=Path,
        metavar="VENV",
        help="also drive Label Studio from this venv (`make label-studio-venv`) at the same levels",
    )
    p.add_argument("--ls-tasks", type=int, default=5000, help="tasks imported into Label Studio")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    results: dict = {
        "synchronous": args.synchronous,
        "levels": [],
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp:
        if args.label_studio:  # first: a broken Label Studio venv fails the run before the long part
            results["label_studio"] = label_studio_run(
                args.label_studio, Path(tmp) / "label-studio", levels, args.seconds, args.ls_tasks
            )
        port = free_port()
        proc = start_server(Path(tmp) / "load.db", port, args.synchronous)
        try:
            ids = publish(f"http://{HOST}:{port}", 20_000, round_=0)
            asyncio.run(run_load(ours(port), 4, 1.0, ids, "warmup"))
            results["levels"] = run_levels(proc, ours(port), levels, args.seconds, ids)
            if args.batch:
                r = measured(proc, ours(port), 8, args.seconds, ids, "B", batch=args.batch)
                logger.info(
                    "  8 clients, batches of %d: %8.1f labels/s  p50 %6.2f ms  p99 %6.2f ms",
                    args.batch,
                    r["labels_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                )
                results["batch"] = r
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        if not args.no_crash:
            c = crash_check(Path(tmp) / "crash.db", free_port(), args.synchronous, 8, args.kill_after)
            logger.info(
                "kill -9 after %.1f s at 8 clients: %d acknowledged, %d stored after restart, %d lost",
                c["killed_after_s"],
                c["acknowledged"],
                c["stored_after_restart"],
                c["lost"],
            )
            results["crash"] = c
    if args.label_studio:
        results["comparison"] = ls.compare(results["levels"], results["label_studio"]["levels"])
        logger.info("%s", ls.table(results))
    results["loadavg_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 1 if results.get("crash", {}).get("lost") else 0


if __name__ == "__main__":
    sys.exit(main())
