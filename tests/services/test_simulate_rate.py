"""Simulated labellers at a person's rate: the think-time sampler's mean and spread measured on its
seeded draws (no timed test), the lease a paced labeller takes, the rate's way through the command
line and the loop's child process, and one short paced run against a real service on 127.0.0.1
whose think time is checked against the draws, not against a clock."""

from __future__ import annotations

import random
import statistics
import subprocess
from pathlib import Path

import pytest

from t2i_rlhf.services.__main__ import main as services_main
from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.simulate import LEASE_WORK_S, ThinkTime, simulate_labellers, think_rng
from tests.services.helpers import demo_tasks, live_server

ADMIN, LAB = "admin-token-rate", "labeller-token-rate"


@pytest.mark.parametrize("rate,spread", [(0.25, 0.5), (2.0, 1.0), (0.1, 0.2)])
def test_think_times_have_the_rates_mean_and_spread(rate: float, spread: float) -> None:
    think = ThinkTime(rate, spread)
    rng = random.Random(7)
    draws = [think.draw(rng) for _ in range(40_000)]
    mean = statistics.fmean(draws)
    cv = statistics.pstdev(draws) / mean
    assert mean == pytest.approx(1 / rate, rel=0.03)
    assert cv == pytest.approx(spread, rel=0.08)
    assert min(draws) > 0


def test_no_spread_is_the_mean_every_time_and_no_rate_is_no_wait() -> None:
    rng = random.Random(0)
    assert {ThinkTime(0.5, 0.0).draw(rng) for _ in range(10)} == {2.0}
    for unpaced in (ThinkTime(), ThinkTime(None, 0.5), ThinkTime(0.0, 0.5)):
        assert not unpaced.paced and unpaced.mean_s == 0.0 and unpaced.draw(rng) == 0.0
        assert unpaced.lease(8) == 8


def test_draws_are_reproducible_per_worker_and_sample() -> None:
    think = ThinkTime(0.5, 0.7)
    first = [think.draw(think_rng(3, w, f"s{i}")) for w in range(3) for i in range(5)]
    again = [think.draw(think_rng(3, w, f"s{i}")) for w in range(3) for i in range(5)]
    other_seed = [think.draw(think_rng(4, w, f"s{i}")) for w in range(3) for i in range(5)]
    assert first == again and first != other_seed and len(set(first)) == len(first)


def test_a_paced_labeller_leases_at_most_a_minute_of_work() -> None:
    assert ThinkTime(0.25, 0.5).lease(8) == 8  # 32 s of work
    assert ThinkTime(0.1, 0.5).lease(8) == int(LEASE_WORK_S / 10)  # 6 of 10 s each
    assert ThinkTime(0.001, 0.5).lease(8) == 1


@pytest.mark.parametrize("rate,spread", [(-1.0, 0.5), (float("inf"), 0.5), (float("nan"), 0.5), (0.5, -0.1),
                                         (0.5, float("nan"))])
def test_bad_rates_are_clear_errors(rate: float, spread: float) -> None:
    with pytest.raises(ValueError, match="labels_per_s|spread"):
        ThinkTime(rate, spread)


def test_the_command_refuses_a_bad_rate_before_any_request() -> None:
    argv = ["label", "simulate", "--url", "http://127.0.0.1:9", "--token", LAB, "--labels-per-s", "-2"]
    with pytest.raises(ValueError, match="labels_per_s"):
        services_main(argv)


def test_the_loop_passes_the_rate_to_its_labeller_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from t2i_rlhf.online import local_services

    seen: list[list[str]] = []

    class FakeProcess:
        def __init__(self, args: list[str], **_: object) -> None:
            seen.append(args)

        def terminate(self) -> None: ...
        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    log_path = tmp_path / "lab.log"
    with local_services.simulated_labellers("http://x", LAB, 2, 0.1, 0, log_path, labels_per_s=0.25, rate_spread=0.3):
        pass
    with local_services.simulated_labellers("http://x", LAB, 2, 0.1, 0, log_path):
        pass
    paced, fast = seen
    assert paced[paced.index("--labels-per-s") + 1] == "0.25" and paced[paced.index("--rate-spread") + 1] == "0.3"
    assert "--labels-per-s" not in fast and "--rate-spread" not in fast


def test_paced_labellers_post_each_label_after_its_drawn_think_time(tmp_path: Path) -> None:
    """200 labels/s: the run takes a fraction of a second. Which worker labelled which sample is
    read back from the service, so the think time the workers report must equal the draws exactly;
    each label's time_spent_ms covers at least its think time (time.sleep never returns early)."""
    tasks = demo_tasks(12, round=0, seed=11)
    think = ThinkTime(200.0, 0.6)
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN, labeller_tokens=[LAB])
    with live_server(settings) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(tasks)
        result = simulate_labellers(url, LAB, workers=3, noise=0.0, seed=5, lease_size=4, think=think)
        rows, _ = admin.export_labels()
    assert result.labels == 12 and result.errors == 0
    drawn = {r["sample_id"]: think.draw(think_rng(5, int(r["labeller"].split("-")[1]), r["sample_id"])) for r in rows}
    assert result.think_s == pytest.approx(sum(drawn.values()), abs=1e-3)
    assert all(r["time_spent_ms"] >= int(1000 * drawn[r["sample_id"]]) - 1 for r in rows)
    assert {r["sample_id"] for r in rows} == {t["sample_id"] for t in tasks}
