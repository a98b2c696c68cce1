"""Labeller reliability: weights from gold accuracy (`reliability.labeller_weights`), the weighted
aggregate the loop attaches to samples, and simulated labellers with their own accounts, three
careful and one careless, whose gold accuracy gives the careless one away. Real HTTP against
uvicorn on 127.0.0.1 and the real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from t2i_rlhf.services.__main__ import main as services_main
from t2i_rlhf.services.client import FeedbackClient, aggregate_labels
from t2i_rlhf.services.reliability import labeller_weights, smoothed_accuracy
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.simulate import labeller_accounts, noise_levels, simulate_labellers
from tests.services.helpers import demo_tasks, live_server

ADMIN = "admin-token-reliability"


def _row(name: str, graded: int, correct: int) -> dict:
    return {"labeller": name, "gold_labelled": graded, "gold_correct": correct}


def test_labeller_weights() -> None:
    rows = [_row("sure", 20, 20), _row("chance", 20, 10), _row("meh", 20, 16), _row("new", 3, 0)]
    assert labeller_weights(rows) == {} and labeller_weights(rows, "off") == {}
    assert labeller_weights(rows, "drop", min_gold=5, min_accuracy=0.75) == {"sure": 1.0, "chance": 0.0, "meh": 1.0}
    w = labeller_weights(rows, "weight", min_gold=5)
    assert w["sure"] == pytest.approx(2 * 21 / 22 - 1) and w["chance"] == 0.0
    assert w["meh"] == pytest.approx(2 * 17 / 22 - 1) and "new" not in w  # too little gold: counts fully
    assert smoothed_accuracy(0, 0) == 0.5 and smoothed_accuracy(3, 3) == 0.8
    assert labeller_weights([_row("worse", 20, 2)], "weight", min_gold=1) == {"worse": 0.0}  # never negative
    for bad in ({"mode": "vote"}, {"mode": "drop", "min_gold": 0}, {"mode": "drop", "min_accuracy": 1.5}):
        with pytest.raises(ValueError):
            labeller_weights(rows, **bad)


def test_aggregate_labels_with_weights() -> None:
    rows = [
        {"label_id": 1, "sample_id": "a", "labeller": "x", "label": "good", "gold": None},
        {"label_id": 2, "sample_id": "a", "labeller": "y", "label": "bad", "gold": None},
        {"label_id": 3, "sample_id": "a", "labeller": "z", "label": "bad"},  # no gold key: an older export
        {"label_id": 4, "sample_id": "b", "labeller": "y", "label": "good", "gold": None},
        {"label_id": 5, "sample_id": "g", "labeller": "x", "label": "good", "gold": "good"},  # gold: not data
    ]
    assert aggregate_labels(rows) == {"a": (pytest.approx(1 / 3), 3), "b": (1.0, 1)}
    weighted = aggregate_labels(rows, {"x": 1.0, "y": 0.0, "z": 0.5})  # y dropped; z counts half
    assert weighted == {"a": (pytest.approx(1 / 1.5), 2)}  # b had only y's label: no label left


def test_careless_labeller_is_found_by_gold_and_dropped(tmp_path: Path) -> None:
    tasks = demo_tasks(48, seed=61)  # half of them wrong for their prompt
    truth = {t["sample_id"]: t["expected_good"] for t in tasks}
    gold = {t["sample_id"] for i, t in enumerate(tasks) if i % 3 == 0}  # 16, mixed in
    published = [
        {k: v for k, v in t.items() if k != "expected_good"}
        | {"gold": ("good" if t["expected_good"] else "bad") if t["sample_id"] in gold else None}
        for t in tasks
    ]
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN)
    with live_server(settings) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(published)
        result = simulate_labellers(url, None, workers=4, noise=[0, 0, 0, 0.5], admin_token=ADMIN, lease_size=4)
        assert result.errors == 0 and result.labels == 16 * 4 + 32  # gold for everyone, the rest once
        assert [a["name"] for a in admin.labellers()] == ["sim-0", "sim-1", "sim-2", "sim-3"]
        assert result.per_labeller["sim-3"]["noise"] == 0.5 and result.per_labeller["sim-0"]["flipped"] == 0
        stats = {s["labeller"]: s for s in admin.stats()["labellers"]}
        assert [stats[f"sim-{i}"]["gold_accuracy"] for i in range(3)] == [1.0, 1.0, 1.0]
        assert stats["sim-3"]["gold_labelled"] == 16 and stats["sim-3"]["gold_accuracy"] == 4 / 16  # seed 0
        rows, _ = admin.export_labels()
        assert all(r["via"] == "labeller_token" for r in rows)
        weights = labeller_weights(stats.values(), "drop", min_gold=5, min_accuracy=0.75)
        assert weights == {"sim-0": 1.0, "sim-1": 1.0, "sim-2": 1.0, "sim-3": 0.0}
        plain, kept = aggregate_labels(rows), aggregate_labels(rows, weights)
        assert set(plain) == set(truth) - gold  # gold never becomes a training label
        careless = {r["sample_id"] for r in rows if r["labeller"] == "sim-3" and not r["gold"]}
        flipped = {
            r["sample_id"]
            for r in rows
            if r["labeller"] == "sim-3" and not r["gold"] and (r["label"] == "good") != truth[r["sample_id"]]
        }
        wrong = {s for s, (y, _) in plain.items() if (y == 1.0) != truth[s]}
        assert careless and wrong == flipped  # every wrong label is one of the careless one's flips ...
        assert set(kept) == set(plain) - careless and all((y == 1.0) == truth[s] for s, (y, _) in kept.items())
        # ... and the export's per-row quality tells the loop the same without /v1/stats
        assert {r["labeller"]: r["labeller_gold_accuracy"] for r in rows}["sim-3"] == 0.25

        # a restarted simulation keeps its names: the accounts get new tokens, the old ones stop working
        first = labeller_accounts(url, ADMIN, ["sim-0"])["sim-0"]
        me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {first}"})
        assert me.json() == {"labeller": "sim-0", "token": "labeller", "labels": stats["sim-0"]["labels"]}
        again = simulate_labellers(url, None, workers=4, noise=0.0, admin_token=ADMIN)
        assert again.labels == 0 and again.errors == 0 and sorted(again.per_labeller) == sorted(stats)
        assert httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {first}"}).status_code == 401
        assert [a["name"] for a in admin.labellers()] == ["sim-0", "sim-1", "sim-2", "sim-3"]


def test_simulate_command_with_accounts_and_a_careless_worker(tmp_path: Path, capsys, monkeypatch) -> None:
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN)
    with live_server(settings) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(demo_tasks(6, seed=62))
        monkeypatch.setenv("T2I_FEEDBACK_ADMIN_TOKEN", ADMIN)
        argv = ["label", "simulate", "--url", url, "--accounts", "--noise", "0,1", "--max-labels", "6"]
        assert services_main(argv) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["labels"] == 6 and out["errors"] == 0
        assert {n: v["noise"] for n, v in out["per_labeller"].items()} == {"sim-0": 0.0, "sim-1": 1.0}
        assert out["per_labeller"]["sim-1"]["flipped"] == out["per_labeller"]["sim-1"]["labels"]  # always wrong
        assert {r["labeller"] for r in admin.export_labels()[0]} <= {"sim-0", "sim-1"}
    with pytest.raises(ValueError, match="per worker"):
        noise_levels([0.1, 0.2], 3)
    with pytest.raises(ValueError, match="noise"):
        noise_levels(1.5, 1)
    with pytest.raises(ValueError, match="token"):
        simulate_labellers("http://127.0.0.1:9", None)
