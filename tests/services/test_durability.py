"""Durability: every label that got a 2xx survives `kill -9` of a real server process and a restart
(`python -m t2i_rlhf.services feedback serve`, the same code path as `t2i-rlhf feedback serve`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.local_server import free_port, wait_healthy
from tests.services.helpers import demo_tasks

ADMIN, LAB = "admin-token-durable", "labeller-token-durable"
REPO = Path(__file__).resolve().parents[2]


def _start(db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "T2I_FEEDBACK_ADMIN_TOKEN": ADMIN, "T2I_FEEDBACK_LABELLER_TOKENS": LAB}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "t2i_rlhf.services",
            "feedback",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            str(db),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_healthy(f"http://127.0.0.1:{port}", 60, proc)
    return proc


def test_acknowledged_labels_survive_kill_9(tmp_path: Path) -> None:
    db, port = tmp_path / "run" / "feedback.db", free_port()
    url = f"http://127.0.0.1:{port}"
    tasks = demo_tasks(300, seed=11, wrong_every=0)
    proc = _start(db, port)
    try:
        with FeedbackClient(url, ADMIN) as admin:
            assert admin.publish_tasks(tasks)["published"] == 300
        acked: dict[tuple[str, str], str] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def post(worker: int) -> None:  # no retries: a failed request is simply not acknowledged
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {LAB}"}, timeout=5) as http:
                for i, t in enumerate(tasks):
                    if stop.is_set():
                        return
                    body = {
                        "sample_id": t["sample_id"],
                        "label": ("good", "bad", "skip")[(i + worker) % 3],
                        "labeller": f"w{worker}",
                    }
                    try:
                        r = http.post("/v1/labels", json=body)
                    except httpx.TransportError:
                        return
                    if r.status_code in (200, 201):
                        with lock:
                            acked[(t["sample_id"], f"w{worker}")] = r.json()["label"]

        threads = [threading.Thread(target=post, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 150:  # kill in the middle of the load, not before or after it
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        n_acked = len(acked)
        assert 150 <= n_acked < 1200, n_acked

        proc = _start(db, port)  # restart on the same file
        with FeedbackClient(url, ADMIN) as admin:
            rows, _ = admin.export_labels()
            stored = {(r["sample_id"], r["labeller"]): r["label"] for r in rows}
            lost = {k: v for k, v in acked.items() if stored.get(k) != v}
            assert not lost, (
                f"{len(lost)} of {n_acked} acknowledged labels lost, e.g. {list(lost.items())[:3]}"
            )
            assert admin.stats()["rounds"][0]["published"] == 300
            # the service works on after the crash: an acknowledged label is still idempotent
            (sid, who), value = next(iter(acked.items()))
            again = httpx.post(
                f"{url}/v1/labels",
                json={"sample_id": sid, "label": "bad", "labeller": who},
                headers={"Authorization": f"Bearer {LAB}"},
            )
            assert again.status_code == 200 and again.json()["label"] == value
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
