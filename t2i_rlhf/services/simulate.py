"""Simulated labellers: the stand-in for people in the demo, tests and benchmarks.

Each worker is a thread with its own labeller id and HTTP client: it leases tasks, downloads
each image, asks the oracle judge whether it matches its prompt, flips the verdict with
probability `noise` (people make mistakes), and posts the labels — all over HTTP, exactly as a
person's browser would.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import asdict, dataclass

from t2i_rlhf.samples import decode_png
from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.shapes import judge

logger = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    labels: int = 0
    good: int = 0
    bad: int = 0
    flipped: int = 0
    already_labelled: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def simulate_labellers(
    url: str,
    token: str,
    workers: int = 4,
    noise: float = 0.1,
    max_labels: int | None = None,
    until_idle: bool = True,
    seed: int = 0,
    round: int | None = None,
    lease_size: int = 8,
    poll_seconds: float = 1.0,
    timeout_s: float | None = None,
    labeller_prefix: str = "sim",
) -> SimulationResult:
    """Run `workers` labellers until no task is left (until_idle), `max_labels` are posted, or
    `timeout_s` passes. Deterministic per (seed, worker) for a fixed task order."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError("noise must be in [0, 1]")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    total = SimulationResult()
    lock = threading.Lock()
    stop = threading.Event()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    claimed = 0  # labels reserved by workers, so that max_labels is never overshot

    def claim(n: int) -> int:
        nonlocal claimed
        with lock:
            got = n if max_labels is None else max(0, min(n, max_labels - claimed))
            claimed += got
            return got

    def release(n: int) -> None:
        nonlocal claimed
        with lock:
            claimed -= n

    def worker(i: int) -> None:
        rng = random.Random(f"{seed}:{i}")
        with FeedbackClient(url, token, labeller=f"{labeller_prefix}-{i}") as client:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                n = claim(lease_size)
                if n == 0:
                    stop.set()
                    break
                created = 0
                try:
                    tasks = client.next_tasks(n, round)["tasks"]
                    if not tasks:
                        if until_idle:
                            break
                        time.sleep(poll_seconds)
                        continue
                    batch, flips = [], 0
                    for t in tasks:
                        start = time.monotonic()
                        good = judge(decode_png(client.image(t["sample_id"])), t["prompt"]).good
                        if rng.random() < noise:
                            good, flips = not good, flips + 1
                        batch.append(
                            {
                                "sample_id": t["sample_id"],
                                "label": "good" if good else "bad",
                                "time_spent_ms": int((time.monotonic() - start) * 1000),
                            }
                        )
                    got = client.post_labels(batch)
                    created = got["created"]
                except Exception:
                    logger.exception("simulated labeller %d: request failed", i)
                    with lock:
                        total.errors += 1
                    time.sleep(poll_seconds)
                    continue
                finally:
                    release(n - created)
                with lock:
                    total.labels += got["created"]
                    total.already_labelled += got["existing"]
                    total.good += sum(r["label"] == "good" for r in got["results"] if r["created"])
                    total.bad += sum(r["label"] == "bad" for r in got["results"] if r["created"])
                    total.flipped += flips

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"sim-labeller-{i}", daemon=True) for i in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.info("simulated labellers: %s", total.as_dict())
    return total
