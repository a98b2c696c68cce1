"""Load benchmark for the feedback service (issue 6), against a real server on 127.0.0.1.

1. Starts `python -m t2i_rlhf.services feedback serve` (uvicorn, one process) on a fresh SQLite
   file, publishes tasks, then posts single labels (POST /v1/labels, one label per request) from
   1, 8 and 32 concurrent keep-alive connections for a fixed time each: labels/s, p50/p99 latency.
   Optionally also batches of labels (POST /v1/labels/batch).
2. Crash: runs a load at 8 connections, `kill -9`s the server mid-run, restarts it on the same
   file and checks that every label that got a 2xx is in the store (exported over HTTP).

The load generator is a minimal asyncio HTTP/1.1 client (no httpx) so that, on a small machine,
the client's own CPU cost disturbs the server as little as possible. Bounded: --seconds per level,
loopback only.

    nice -n 10 .venv/bin/python benchmarks/bench_feedback_load.py --seconds 5 --out bench.json
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
from pathlib import Path

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
    """One keep-alive HTTP/1.1 connection; just enough protocol for JSON POSTs."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {LAB}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def run_load(
    port: int,
    clients: int,
    seconds: float,
    sample_ids: list[str],
    tag: str,
    batch: int = 1,
    acked: dict | None = None,
) -> dict:
    """`clients` connections post labels (each its own labeller) until `seconds` pass or their
    samples run out. Every 2xx is recorded in `acked` if given."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def client(c: int) -> None:
        nonlocal errors
        conn = Conn(port)
        await conn.open()
        who = f"{tag}-c{c}"
        try:
            for start in range(0, len(sample_ids), batch):
                if time.monotonic() >= stop_at:
                    return
                chunk = sample_ids[start : start + batch]
                labels = [
                    {"sample_id": s, "label": "good" if (i + c) % 2 else "bad", "labeller": who}
                    for i, s in enumerate(chunk, start)
                ]
                path, body = (
                    ("/v1/labels", labels[0]) if batch == 1 else ("/v1/labels/batch", {"labels": labels})
                )
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.post(path, json.dumps(body).encode())
                except (ConnectionError, asyncio.IncompleteReadError):
                    errors += 1
                    return
                latencies.append(time.perf_counter() - t0)
                if 200 <= status < 300:
                    if acked is not None:
                        for lab in labels:
                            acked[(lab["sample_id"], who)] = lab["label"]
                else:
                    errors += 1
        finally:
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
        "errors": errors,
        "seconds": round(wall, 2),
        "labels_per_s": round(len(lat) * batch / wall, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


def measured(
    proc: subprocess.Popen, port: int, clients: int, seconds: float, ids: list[str], tag: str, batch: int = 1
) -> dict:
    """run_load plus the CPU the server and this client spent: labels per server CPU-second is
    what the server sustains on one core of its own, whatever else the machine is running."""
    s0, c0 = cpu_seconds(proc.pid), time.process_time()
    r = asyncio.run(run_load(port, clients, seconds, ids, tag, batch=batch))
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
        task = asyncio.create_task(run_load(port, clients, 60, ids, "crash", acked=acked))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each level")
    p.add_argument("--batch", type=int, default=0, help="also measure batches of this size at 8 clients")
    p.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    p.add_argument("--kill-after", type=float, default=2.0, help="seconds into the crash run before kill -9")
    p.add_argument("--no-crash", action="store_true")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    results: dict = {
        "synchronous": args.synchronous,
        "levels": [],
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp:
        port = free_port()
        proc = start_server(Path(tmp) / "load.db", port, args.synchronous)
        try:
            ids = publish(f"http://{HOST}:{port}", 20_000, round_=0)
            asyncio.run(run_load(port, 4, 1.0, ids, "warmup"))
            for n in (int(x) for x in args.levels.split(",")):
                r = measured(proc, port, n, args.seconds, ids, f"L{n}")
                logger.info(
                    "%3d clients: %8.1f labels/s  p50 %6.2f ms  p99 %6.2f ms  (%d requests, %d errors, "
                    "server CPU %.3f ms/request)",
                    n,
                    r["labels_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["requests"],
                    r["errors"],
                    r["server_cpu_ms_per_request"],
                )
                results["levels"].append(r)
            if args.batch:
                r = measured(proc, port, 8, args.seconds, ids, "B", batch=args.batch)
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
    results["loadavg_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 1 if results.get("crash", {}).get("lost") else 0


if __name__ == "__main__":
    sys.exit(main())
