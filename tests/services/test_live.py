"""FeedbackClient and simulated labellers against a real uvicorn server on 127.0.0.1 — the way the
online loop and people's scripts use the service."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from t2i_rlhf.services.__main__ import main as services_main
from t2i_rlhf.services.client import FeedbackClient, FeedbackError, aggregate_labels
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.simulate import simulate_labellers
from tests.services.helpers import demo_tasks, live_server

ADMIN, LAB = "admin-token-live", "labeller-token-live"
TASKS = demo_tasks(16, round=0, seed=3)
EXPECTED = {t["sample_id"]: t["expected_good"] for t in TASKS}


def _server(tmp_path: Path, **kw) -> Iterator[str]:
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN, labeller_tokens=[LAB], **kw)
    with live_server(settings) as url:
        yield url


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield from _server(tmp_path)


def test_demo_tasks_are_half_wrong() -> None:
    assert 4 <= sum(EXPECTED.values()) <= 12  # the simulation below is meaningful only with both kinds


def test_client_round_trip(url: str) -> None:
    with FeedbackClient(url, ADMIN) as admin, FeedbackClient(url, LAB, labeller="ann") as ann:
        assert admin.health() == {"status": "ok", "database": "ok"}
        table = pa.Table.from_pylist([{k: v for k, v in t.items() if k != "expected_good"} for t in TASKS])
        assert admin.publish_tasks(table, chunk_rows=5) == {"published": 16, "existing": 0}
        assert admin.publish_tasks(TASKS[:3]) == {"published": 0, "existing": 3}  # dicts work too
        leased = ann.next_tasks(4)
        assert leased["labeller"] == "ann" and len(leased["tasks"]) == 4
        sid = leased["tasks"][0]["sample_id"]
        assert ann.image(sid) == TASKS[0]["image"]
        assert ann.post_label(sid, "good", time_spent_ms=50)["created"] is True
        assert ann.post_label(sid, "bad")["label"] == "good"  # idempotent: the stored label comes back
        got = ann.post_labels([{"sample_id": t["sample_id"], "label": "bad"} for t in leased["tasks"][1:]])
        assert got["created"] == 3
        assert ann.undo(leased["tasks"][3]["sample_id"])["label"] == "bad"
        rows, cursor = admin.export_labels()
        assert [(r["sample_id"], r["label"], r["labeller"]) for r in rows] == [
            (t["sample_id"], "good" if i == 0 else "bad", "ann") for i, t in enumerate(leased["tasks"][:3])
        ]
        more, cursor2 = admin.export_labels(since=cursor)
        assert more == [] and cursor2 == cursor
        ann.post_label(TASKS[10]["sample_id"], "skip")
        more, cursor3 = admin.export_labels(since=cursor, page_size=1)  # pages until exhausted
        assert [r["sample_id"] for r in more] == [TASKS[10]["sample_id"]] and int(cursor3) > int(cursor)
        table, tcur = admin.export_labels_table(round=0)
        assert table.num_rows == 4 and tcur == cursor3
        stats = admin.stats(round=0)["rounds"][0]
        assert (stats["published"], stats["labelled"], stats["good"], stats["bad"], stats["skipped"]) == (
            16,
            3,
            1,
            2,
            1,
        )
        with pytest.raises(FeedbackError) as err:
            ann.export_labels()
        assert err.value.status_code == 403
        with pytest.raises(FeedbackError) as err:
            ann.post_label("missing", "good")
        assert err.value.status_code == 404 and "missing" in str(err.value.detail)


def test_simulated_labellers_follow_the_judge(url: str) -> None:
    with FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(TASKS)
        result = simulate_labellers(url, LAB, workers=3, noise=0.0, seed=1, lease_size=3)
        assert result.labels == 16 and result.errors == 0 and result.flipped == 0
        assert result.good == sum(EXPECTED.values())
        rows, _ = admin.export_labels()
        assert {r["sample_id"]: r["label"] == "good" for r in rows} == EXPECTED  # each sample once, as judged
        assert {r["labeller"] for r in rows} <= {"sim-0", "sim-1", "sim-2"}
        assert simulate_labellers(url, LAB, workers=2, noise=0.0).labels == 0  # nothing left: stops idle


def test_noise_and_several_labels_per_sample(tmp_path: Path) -> None:
    for url in _server(tmp_path, labels_per_sample=3):
        with FeedbackClient(url, ADMIN) as admin:
            admin.publish_tasks(TASKS)
            result = simulate_labellers(url, LAB, workers=3, noise=0.3, seed=5, lease_size=4)
            assert result.labels == 48 and 0 < result.flipped < 48
            rows, _ = admin.export_labels()
            per: dict[str, list[str]] = defaultdict(list)
            for r in rows:
                per[r["sample_id"]].append(r["labeller"])
            assert all(sorted(v) == ["sim-0", "sim-1", "sim-2"] for v in per.values()) and len(per) == 16
            wrong = sum((r["label"] == "good") != EXPECTED[r["sample_id"]] for r in rows)
            assert wrong == result.flipped
            agg = aggregate_labels(rows)
            assert len(agg) == 16 and all(n == 3 for _, n in agg.values())
            assert sum(abs(mean - EXPECTED[s]) for s, (mean, _) in agg.items()) == pytest.approx(wrong / 3)
            stats = admin.stats()["rounds"][0]
            assert stats["complete"] == 16 and stats["pairs"] == 48
            assert 0 < stats["agreement"] < 1


def test_aggregate_labels() -> None:
    rows = [
        {"label_id": 1, "sample_id": "a", "labeller": "x", "label": "good"},
        {"label_id": 2, "sample_id": "a", "labeller": "y", "label": "bad"},
        {"label_id": 3, "sample_id": "a", "labeller": "z", "label": "skip"},
        {"label_id": 4, "sample_id": "b", "labeller": "x", "label": "skip"},
        {"label_id": 5, "sample_id": "c", "labeller": "x", "label": "bad"},
        {"label_id": 9, "sample_id": "c", "labeller": "x", "label": "good"},  # re-labelled after an undo
    ]
    assert aggregate_labels(rows) == {"a": (0.5, 2), "c": (1.0, 1)}


def test_label_simulate_command(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(TASKS[:6])
    argv = [
        "label",
        "simulate",
        "--url",
        url,
        "--token",
        LAB,
        "--workers",
        "2",
        "--noise",
        "0",
        "--max-labels",
        "4",
    ]
    assert services_main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["labels"] == 4 and out["errors"] == 0
    with pytest.raises(ValueError, match="noise"):
        simulate_labellers(url, LAB, noise=1.5)


def test_the_loops_labeller_process_takes_any_token(tmp_path: Path) -> None:
    """The run starts `label simulate` as a child process; a token that begins with "-" once
    reached it as a command-line value that argparse read as a missing one."""
    import time

    from t2i_rlhf.online.local_services import simulated_labellers

    dash_led = "-dash-led-token"
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN, labeller_tokens=[dash_led])
    with live_server(settings) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(TASKS)
        log_path = tmp_path / "lab.log"
        with simulated_labellers(url, dash_led, workers=2, noise=0.0, seed=0, log_path=log_path) as proc:
            deadline = time.monotonic() + 60
            while admin.stats()["rounds"][0]["complete"] < len(TASKS):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
                time.sleep(0.5)
        assert len(admin.export_labels()[0]) == len(TASKS)
