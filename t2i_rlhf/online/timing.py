"""Where a round's wall time goes: who waited on whom.

Work is intervals of wall time of two kinds. Labelling: published samples are waiting for people
(or the simulated labellers), and the generators and the training group wait for their labels
(the `labels` step). Compute: generation, reward model, re-scoring, fine-tuning, evaluation, during
which the labellers have nothing to do. `idle_times` takes any intervals, overlapping or not, and a
window, and gives the time the run was live in it and how much of that each side sat idle. The
sequential loop feeds it the step timings it records in state.json (`step_intervals`); a loop that
overlaps rounds can feed it intervals that overlap, across rounds, and the same arithmetic holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Span = tuple[float, float]

LABELLING, COMPUTE = "labelling", "compute"
# Steps during which labellers are busy and compute waits; every other step is compute.
LABELLING_STEPS = frozenset({"labels"})
# The order the sequential loop runs a round's steps (run.py:run_round): how steps recorded without
# a start time (by older code) are laid out.
STEP_ORDER = ("generate", "publish", "labels", "reward_model", "rescore", "finetune", "evaluate")


@dataclass(frozen=True)
class Interval:
    start: float  # seconds on any one clock (state.json: Unix time)
    end: float
    kind: str  # LABELLING or COMPUTE
    round: int | None = None
    step: str | None = None


def union(spans: Iterable[Span]) -> list[Span]:
    """The same time as sorted, disjoint spans; empty and reversed spans are dropped."""
    out: list[Span] = []
    for a, b in sorted((a, b) for a, b in spans if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def intersect(a: Iterable[Span], b: Iterable[Span]) -> list[Span]:
    """The time covered by both `a` and `b`, as sorted, disjoint spans."""
    a, b = union(a), union(b)
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def length(spans: Iterable[Span]) -> float:
    """Seconds covered by at least one span (overlaps counted once)."""
    return sum(b - a for a, b in union(spans))


@dataclass(frozen=True)
class Timing:
    """Seconds of one window: live wall time, and how much of it labellers and compute sat idle."""

    wall_s: float
    labeller_idle_s: float
    compute_idle_s: float

    @property
    def labeller_idle_fraction(self) -> float:
        return self.labeller_idle_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def compute_idle_fraction(self) -> float:
        return self.compute_idle_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": round(self.wall_s, 1), "labeller_idle_s": round(self.labeller_idle_s, 1),
                "compute_idle_s": round(self.compute_idle_s, 1),
                "labeller_idle_fraction": round(self.labeller_idle_fraction, 3),
                "compute_idle_fraction": round(self.compute_idle_fraction, 3)}


def idle_times(intervals: Sequence[Interval], window: Span, live: Iterable[Span] | None = None) -> Timing:
    """Within `window`: wall is the time the run was live (`live`; by default whenever any interval
    ran, so a stopped driver's downtime before a resume counts for nobody); labeller idle is live
    time no labelling interval covers, compute idle live time no compute interval covers. Time
    when both ran is idle for neither; live time when neither ran is idle for both."""
    live = [(i.start, i.end) for i in intervals] if live is None else live
    on = intersect(live, [window])

    def busy(kind: str) -> float:
        return length(intersect(on, [(i.start, i.end) for i in intervals if i.kind == kind]))

    wall = length(on)
    return Timing(wall, wall - busy(LABELLING), wall - busy(COMPUTE))


def step_kind(step: str) -> str:
    return LABELLING if step in LABELLING_STEPS else COMPUTE


def _order(step: str) -> tuple[int, str]:
    return (STEP_ORDER.index(step) if step in STEP_ORDER else len(STEP_ORDER), step)


def step_intervals(rounds: Mapping[str, Mapping[str, dict]]) -> list[Interval]:
    """Each recorded step (`RunState.rounds`: round -> step -> result) as an interval, from its
    `started_at` and `seconds`. A step recorded without a start (older code) is laid right after
    the step before it, as the sequential loop ran them; one without `seconds` is left out."""
    out: list[Interval] = []
    cursor = 0.0
    for key in sorted(rounds, key=int):
        steps = rounds[key]
        for name in sorted(steps, key=_order):
            result = steps[name]
            seconds = result.get("seconds") if isinstance(result, dict) else None
            if seconds is None:
                continue
            start = float(result.get("started_at", cursor))
            out.append(Interval(start, start + float(seconds), step_kind(name), int(key), name))
            cursor = max(cursor, start + float(seconds))
    return out


def round_timings(intervals: Sequence[Interval]) -> dict[int, Timing]:
    """round -> its Timing. A round's window runs from its first interval's start to its last's
    end; within it, every round's intervals count, so work of another round that overlaps it
    keeps its labellers or its compute busy."""
    out = {}
    for k in sorted({i.round for i in intervals if i.round is not None}):
        own = [i for i in intervals if i.round == k]
        out[k] = idle_times(intervals, (min(i.start for i in own), max(i.end for i in own)))
    return out


def overall_timing(intervals: Sequence[Interval]) -> Timing | None:
    """The whole run's Timing (overlapping rounds counted once); None without intervals."""
    if not intervals:
        return None
    return idle_times(intervals, (min(i.start for i in intervals), max(i.end for i in intervals)))


def timing_records(rounds: Mapping[str, Mapping[str, dict]]) -> dict[str, dict[str, float]]:
    """round (as state.json keys it) -> Timing.as_dict(), from the recorded step times."""
    return {str(k): t.as_dict() for k, t in round_timings(step_intervals(rounds)).items()}
