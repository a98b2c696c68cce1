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

With a rate (`ThinkTime`), each label takes a person's think time: drawn per (seed, worker,
sample id) from a lognormal with the rate's mean and the given coefficient of variation, and
each label is posted as soon as it is made, as the labelling page does. Without one they label
as fast as the service answers (the demo and tests until the loop could overlap rounds).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
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
    think_s: float = 0.0  # think time drawn for the labels posted, summed (0 without a rate)
    per_labeller: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> noise, labels, flipped

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# With a rate, a worker leases at most this many seconds of expected work at once, so its lease
# (the service's `lease_seconds`, 300 s by default) never runs out while it thinks, and the last
# tasks of a round are not held by one slow worker while the others wait.
LEASE_WORK_S = 60.0
# The think times' coefficient of variation unless told (the command's and the config's default).
DEFAULT_RATE_SPREAD = 0.5


@dataclass(frozen=True)
class ThinkTime:
    """How long a simulated person takes per label: a lognormal with mean 1 / `labels_per_s`
    and coefficient of variation `spread` (0: every label takes the mean). Response times of
    people are right-skewed, which a lognormal draws without negative or zero times.
    `labels_per_s` None or 0: no think time at all (as fast as possible)."""

    labels_per_s: float | None = None
    spread: float = DEFAULT_RATE_SPREAD

    def __post_init__(self) -> None:
        if self.labels_per_s is not None and not (math.isfinite(self.labels_per_s) and self.labels_per_s >= 0):
            raise ValueError(f"labels_per_s must be a finite number >= 0 (0: as fast as possible), "
                             f"got {self.labels_per_s}")
        if not (math.isfinite(self.spread) and self.spread >= 0):
            raise ValueError(f"rate spread (coefficient of variation) must be >= 0, got {self.spread}")

    @property
    def paced(self) -> bool:
        return bool(self.labels_per_s)

    @property
    def mean_s(self) -> float:
        return 1.0 / self.labels_per_s if self.paced else 0.0

    def draw(self, rng: random.Random) -> float:
        """One label's think time in seconds."""
        if not self.paced:
            return 0.0
        if self.spread == 0:
            return self.mean_s
        sigma2 = math.log1p(self.spread**2)  # a lognormal's CV² is exp(σ²) − 1
        return rng.lognormvariate(math.log(self.mean_s) - sigma2 / 2, math.sqrt(sigma2))

    def lease(self, lease_size: int) -> int:
        """Tasks to lease at once: `lease_size`, or fewer when they would take over LEASE_WORK_S."""
        if not self.paced:
            return lease_size
        return max(1, min(lease_size, int(LEASE_WORK_S / self.mean_s)))


def think_rng(seed: int, worker: int, sample_id: str) -> random.Random:
    """The draw of one worker's think time on one sample: the same however tasks are shared out."""
    return random.Random(f"{seed}:{worker}:{sample_id}:think")


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
    think: ThinkTime | None = None,
) -> SimulationResult:
    """Run `workers` labellers until no task is left (until_idle), `max_labels` are posted, or
    `timeout_s` passes. `noise`: one flip probability, or one per worker. `admin_token`: give
    each worker its own account (else they share `token`). `think`: each worker's rate (none:
    as fast as possible)."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    think = think or ThinkTime()
    lease_size = think.lease(lease_size)
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

    def record(name: str, got: dict, flips: int, think_s: float) -> None:
        with lock:
            total.labels += got["created"]
            total.already_labelled += got["existing"]
            total.good += sum(r["label"] == "good" for r in got["results"] if r["created"])
            total.bad += sum(r["label"] == "bad" for r in got["results"] if r["created"])
            total.flipped += flips
            total.think_s += think_s
            total.per_labeller[name]["labels"] += got["created"]
            total.per_labeller[name]["flipped"] += flips

    def past_deadline() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def wait(seconds: float) -> None:
        """Sleep a think time; the deadline cuts it short. (`stop` does not: it only says that
        `max_labels` is claimed, and what a worker claimed it labels.)"""
        if deadline is not None:
            seconds = min(seconds, deadline - time.monotonic())
        if seconds > 0:
            time.sleep(seconds)

    def worker(i: int) -> None:
        name = names[i]
        own = admin_token is not None  # an account's token: the service knows who it is
        with FeedbackClient(url, tokens[name], labeller=None if own else name) as client:
            while not stop.is_set() and not past_deadline():
                n = claim(lease_size)
                if n == 0:
                    stop.set()
                    break
                created = 0

                def posted(got: dict, flips: int, think_s: float) -> None:
                    nonlocal created
                    created += got["created"]
                    record(name, got, flips, think_s)

                try:
                    tasks = client.next_tasks(n, round)["tasks"]
                    if not tasks:
                        if until_idle:
                            break
                        time.sleep(poll_seconds)
                        continue
                    label_tasks(i, client, tasks, posted)
                except Exception:
                    logger.exception("simulated labeller %d: request failed", i)
                    with lock:
                        total.errors += 1
                    time.sleep(poll_seconds)
                    continue
                finally:
                    release(n - created)

    def label_tasks(i: int, client: FeedbackClient, tasks: list[dict],
                    posted: Callable[[dict, int, float], None]) -> None:
        """Judge each task, flip with the worker's noise, take the think time; post the batch at
        the end, or each label at once when paced, handing each response to `posted`."""
        batch: list[dict] = []
        flips, think_s = 0, 0.0
        for t in tasks:
            if think.paced and past_deadline():
                break  # the rest of the lease expires on the service and goes to someone else
            start = time.monotonic()
            good = judge(decode_png(client.image(t["sample_id"])), t["prompt"]).good
            if random.Random(f"{seed}:{i}:{t['sample_id']}").random() < levels[i]:
                good, flips = not good, flips + 1
            thought = think.draw(think_rng(seed, i, t["sample_id"]))
            wait(thought - (time.monotonic() - start))  # judging counts as part of the think time
            think_s += thought
            batch.append({"sample_id": t["sample_id"], "label": "good" if good else "bad",
                          "time_spent_ms": int((time.monotonic() - start) * 1000)})
            if think.paced:
                posted(client.post_labels(batch), flips, think_s)
                batch, flips, think_s = [], 0, 0.0
        if batch:
            posted(client.post_labels(batch), flips, think_s)

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"sim-labeller-{i}", daemon=True) for i in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.info("simulated labellers: %s", total.as_dict())
    return total
