"""Where a round's time goes, on hand-built intervals: the sequential loop's steps, overlapping
rounds as an overlapped loop would make them, a resumed run's downtime, step times recorded by
older code, and the table in report.md. Pure Python: no Ray, no clock."""

from __future__ import annotations

import pytest

from t2i_rlhf.online.report import timing_line, timing_table, write_report
from t2i_rlhf.online.state import RunState, StateStore
from t2i_rlhf.online.timing import (
    COMPUTE,
    LABELLING,
    Interval,
    idle_times,
    intersect,
    length,
    overall_timing,
    round_timings,
    step_intervals,
    timing_records,
    union,
)


def C(a: float, b: float, round: int | None = None) -> Interval:
    return Interval(a, b, COMPUTE, round)


def L(a: float, b: float, round: int | None = None) -> Interval:
    return Interval(a, b, LABELLING, round)


def test_union_intersect_and_length() -> None:
    assert union([(5, 7), (0, 2), (1, 3), (3, 4), (9, 9), (8, 6)]) == [(0, 4), (5, 7)]
    assert intersect([(0, 4), (6, 10)], [(2, 7), (9, 12)]) == [(2, 4), (6, 7), (9, 10)]
    assert intersect([(0, 1)], [(1, 2)]) == []
    assert length([(0, 4), (2, 6), (10, 11)]) == 7
    assert length([]) == 0


def test_sequential_steps_labels_is_compute_idle_the_rest_labeller_idle() -> None:
    steps = [C(0, 100), C(100, 101), L(101, 401), C(401, 500)]  # generate, publish, labels, the rest
    t = idle_times(steps, (0, 500))
    assert (t.wall_s, t.labeller_idle_s, t.compute_idle_s) == (500, 200, 300)
    assert t.labeller_idle_fraction == pytest.approx(0.4) and t.compute_idle_fraction == pytest.approx(0.6)


def test_overlapping_work_is_idle_for_neither_side() -> None:
    """Round k+1 generating and being labelled while round k trains: only the gaps are idle."""
    intervals = [C(0, 100, 0), L(100, 300, 0), C(300, 500, 0),  # round 0: generate, labels, train
                 C(300, 400, 1), L(400, 550, 1), C(550, 700, 1)]  # round 1 overlaps round 0's training
    by_round = round_timings(intervals)
    r0, r1 = by_round[0], by_round[1]
    # round 0: nothing to label 0-100 and 300-400 (round 1's samples are labelled from 400 on),
    # nothing computed while its own samples were labelled (100-300)
    assert (r0.wall_s, r0.labeller_idle_s, r0.compute_idle_s) == (500, 200, 200)
    # round 1: round 0's training keeps compute busy 400-500 while round 1 is labelled; 500-550 is idle
    assert (r1.wall_s, r1.labeller_idle_s, r1.compute_idle_s) == (400, 250, 50)
    whole = overall_timing(intervals)  # the overlap counted once
    assert (whole.wall_s, whole.labeller_idle_s, whole.compute_idle_s) == (700, 350, 250)


def test_time_nothing_ran_is_idle_for_both_and_downtime_for_nobody() -> None:
    intervals = [C(0, 10), L(10, 20), C(1000, 1010)]  # a resume between 20 and 1000
    t = idle_times(intervals, (0, 1010))
    assert (t.wall_s, t.labeller_idle_s, t.compute_idle_s) == (30, 20, 10)
    # with the driver's live time given, a gap inside it (weights being pushed) is idle for both
    t = idle_times(intervals, (0, 1010), live=[(0, 25), (1000, 1010)])
    assert (t.wall_s, t.labeller_idle_s, t.compute_idle_s) == (35, 25, 15)
    # work outside the live time or the window does not count
    t = idle_times([L(-50, 5), C(5, 50)], (0, 20), live=[(0, 10)])
    assert (t.wall_s, t.labeller_idle_s, t.compute_idle_s) == (10, 5, 5)


def test_empty_window() -> None:
    t = idle_times([C(0, 10)], (20, 30))
    assert t.wall_s == 0 and t.labeller_idle_fraction == 0 and t.compute_idle_fraction == 0
    assert overall_timing([]) is None


def test_step_times_from_the_run_state_new_and_old() -> None:
    new = {"0": {"generate": {"seconds": 100.0, "started_at": 1000.0},
                 "labels": {"seconds": 300.0, "started_at": 1101.0, "labels": 8},
                 "publish": {"seconds": 1.0, "started_at": 1100.0},
                 "finetune": {"seconds": 99.0, "started_at": 1401.0},
                 "evaluate": {"splits": {}}}}  # no seconds: left out
    intervals = step_intervals(new)
    assert [(i.step, i.kind, i.start, i.end) for i in intervals] == [
        ("generate", COMPUTE, 1000, 1100), ("publish", COMPUTE, 1100, 1101),
        ("labels", LABELLING, 1101, 1401), ("finetune", COMPUTE, 1401, 1500)]
    # older code recorded seconds only: the steps are laid back to back in the loop's order
    old = {"1": {"labels": {"seconds": 5.0}, "generate": {"seconds": 10.0}, "finetune": {"seconds": 20.0}},
           "0": {"generate": {"seconds": 1.0}, "labels": {"seconds": 2.0}}}
    assert [(i.round, i.step, i.start, i.end) for i in step_intervals(old)] == [
        (0, "generate", 0, 1), (0, "labels", 1, 3), (1, "generate", 3, 13), (1, "labels", 13, 18),
        (1, "finetune", 18, 38)]
    assert timing_records(old)["1"] == {"wall_s": 35.0, "labeller_idle_s": 30.0, "compute_idle_s": 5.0,
                                        "labeller_idle_fraction": 0.857, "compute_idle_fraction": 0.143}


def sequential_state() -> RunState:
    state = RunState()
    t = 1_700_000_000.0
    for k in range(2):
        for step, seconds in (("generate", 170.0), ("publish", 2.0), ("labels", 600.0), ("finetune", 150.0)):
            state.mark(k, step, {"seconds": seconds, "started_at": t, **({"labels": 8, "good": 5, "bad": 3}
                                                                        if step == "labels" else {})})
            t += seconds
    state.timing = timing_records(state.rounds)
    return state


def test_the_timing_is_kept_in_state_json_and_shown_in_the_report(tmp_path) -> None:
    state = sequential_state()
    assert state.timing["0"]["wall_s"] == 922.0 and state.timing["0"]["compute_idle_s"] == 600.0
    store = StateStore(tmp_path)
    store.save(state)
    assert store.load().timing == state.timing
    table = timing_table(state).splitlines()
    assert table[0] == "| round | wall | labellers idle | compute idle |"
    assert table[2] == "| 0 | 15.4 min | 5.4 min (34.9%) | 10.0 min (65.1%) |"
    assert table[4] == "| all | 30.7 min | 10.7 min (34.9%) | 20.0 min (65.1%) |"
    assert timing_line(state.timing["1"]) == ("wall 15.4 min; labellers idle 5.4 min (34.9%), "
                                              "compute idle 10.0 min (65.1%)")
    report = write_report(tmp_path, state, None, None).read_text()
    assert "## Time per round" in report and table[2] in report


def test_a_state_without_step_times_has_no_table() -> None:
    state = RunState()
    state.mark(0, "labels", {"labels": 8, "good": 5, "bad": 3})
    assert timing_table(state) == "" and timing_records(state.rounds) == {}


def test_the_driver_records_each_steps_start_and_keeps_the_timing_in_state(tmp_path, monkeypatch) -> None:
    """Driver.step on a fake clock: a step that takes the clock forward is recorded with its start
    and its seconds, and state.json's timing follows every recorded step."""
    from types import SimpleNamespace

    from t2i_rlhf import run

    now = [1_700_000_000.0]
    monkeypatch.setattr(run, "time", SimpleNamespace(time=lambda: now[0], monotonic=lambda: now[0]))

    def takes(seconds: float) -> dict:
        now[0] += seconds
        return {}

    store = StateStore(tmp_path)
    d = run.Driver(SimpleNamespace(state=RunState()), store)
    for step, seconds in (("generate", 100.0), ("publish", 1.0), ("labels", 300.0), ("finetune", 99.0)):
        d.step(0, step, lambda s=seconds: takes(s))
    saved = store.load()
    assert saved.rounds["0"]["labels"] == {"seconds": 300.0, "started_at": 1_700_000_101.0}
    assert saved.timing["0"] == {"wall_s": 500.0, "labeller_idle_s": 200.0, "compute_idle_s": 300.0,
                                 "labeller_idle_fraction": 0.4, "compute_idle_fraction": 0.6}
    assert d.step(0, "labels", lambda: takes(1e6)) == saved.rounds["0"]["labels"]  # done: not run again
