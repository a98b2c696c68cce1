"""Simulated labellers: the stand-in for people in the demo, tests and benchmarks.

Each worker is a thread with its own labeller id and HTTP client: it leases tasks, downloads
each image, asks the oracle judge whether it matches its prompt, flips the verdict with its
probability `noise` (people make mistakes; a list gives each worker its own, so careful and
careless labellers can be mixed), and posts the labels — all over HTTP, exactly as a person's
browser would. Whether a worker flips a given sample is a function of (seed, worker, sample id),
so a run is reproducible however the tasks happen to be shared out.

With `admin_token`, each worker gets its own labeller account (`POST /v1/labellers`, named
`<prefix>-<i>`), as a team's people would; an account left by an earlier run of the same name
gets a fresh token (`.../token`), so a restarted simulation keeps its identities. Without it,
the workers share `token` (the shared labeller token) and name themselves.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from t2i_rlhf.samples import decode_png
from t2i_rlhf.services.client import FeedbackClient, FeedbackError
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
    per_labeller: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> noise, labels, flipped

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_levels(noise: float | Sequence[float], workers: int) -> list[float]:
    """One flip probability per worker: a number is everyone's; a list is one per worker."""
    levels = [float(noise)] * workers if isinstance(noise, int | float) else [float(x) for x in noise]
    if len(levels) != workers:
        raise ValueError(f"noise lists one flip probability per worker: {len(levels)} for {workers} workers")
    if not all(0.0 <= x <= 1.0 for x in levels):
        raise ValueError("noise must be in [0, 1]")
    return levels


def labeller_accounts(url: str, admin_token: str, names: Sequence[str]) -> dict[str, str]:
    """name -> token: a new account per name, or a new token for an account that exists."""
    tokens = {}
    with FeedbackClient(url, admin_token) as admin:
        for name in names:
            try:
                tokens[name] = admin.create_labeller(name)["token"]
            except FeedbackError as e:
                if e.status_code != 409:
                    raise
                tokens[name] = admin.rotate_token(name)["token"]  # 404/409 if not an active account: raised
    return tokens


def simulate_labellers(
    url: str,
    token: str | None,
    workers: int = 4,
    noise: float | Sequence[float] = 0.1,
    max_labels: int | None = None,
    until_idle: bool = True,
    seed: int = 0,
    round: int | None = None,
    lease_size: int = 8,
    poll_seconds: float = 1.0,
    timeout_s: float | None = None,
    labeller_prefix: str = "sim",
    admin_token: str | None = None,
) -> SimulationResult:
    """Run `workers` labellers until no task is left (until_idle), `max_labels` are posted, or
    `timeout_s` passes. `noise`: one flip probability, or one per worker. `admin_token`: give
    each worker its own account (else they share `token`)."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    levels = noise_levels(noise, workers)
    names = [f"{labeller_prefix}-{i}" for i in range(workers)]
    if admin_token:
        tokens = labeller_accounts(url, admin_token, names)
    elif token:
        tokens = dict.fromkeys(names, token)
    else:
        raise ValueError("give a labeller token, or the admin token to create an account per worker")
    total = SimulationResult(
        per_labeller={n: {"noise": levels[i], "labels": 0, "flipped": 0} for i, n in enumerate(names)}
    )
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
        name = names[i]
        own = admin_token is not None  # an account's token: the service knows who it is
        with FeedbackClient(url, tokens[name], labeller=None if own else name) as client:
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
                        if random.Random(f"{seed}:{i}:{t['sample_id']}").random() < levels[i]:
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
                    total.per_labeller[name]["labels"] += got["created"]
                    total.per_labeller[name]["flipped"] += flips

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"sim-labeller-{i}", daemon=True) for i in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.info("simulated labellers: %s", total.as_dict())
    return total
