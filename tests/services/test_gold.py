"""Gold tasks: published with a known answer, handed to every labeller among the others and never
shown as gold to them; each labeller's accuracy on them and agreement with the others are in
/v1/stats and the export; the loop does not train on them. Real HTTP against uvicorn on
127.0.0.1 and the real SQLite store."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t2i_rlhf.services.client import FeedbackClient, FeedbackError, aggregate_labels
from t2i_rlhf.services.settings import FeedbackSettings
from tests.services.helpers import demo_tasks, live_server

ADMIN = "admin-token-gold"
TASKS = demo_tasks(6, seed=41)
GOLD = {TASKS[1]["sample_id"]: "good", TASKS[4]["sample_id"]: "bad"}  # mixed in, published with the rest
IDS = [t["sample_id"] for t in TASKS]
ORDINARY = [s for s in IDS if s not in GOLD]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A service with the tasks published (JSON for the first half, Parquet for the rest) and
    three labeller accounts -> (url, {name: token})."""
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN)
    with live_server(settings) as url, FeedbackClient(url, ADMIN) as admin:
        rows = [
            {k: v for k, v in t.items() if k != "expected_good"} | {"gold": GOLD.get(t["sample_id"])} for t in TASKS
        ]
        body = {
            "tasks": [
                {**{k: v for k, v in t.items() if k != "image"}, "image_b64": base64.b64encode(t["image"]).decode()}
                for t in rows[:3]
            ]
        }
        assert httpx.post(f"{url}/v1/tasks", json=body, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 201
        assert admin.publish_tasks(rows[3:])["published"] == 3  # Parquet, with a gold column
        yield url, {n: admin.create_labeller(n)["token"] for n in ("ann", "bob", "cy")}


def test_gold_tasks_go_to_everyone_and_look_like_any_other(service) -> None:
    url, tok = service
    with FeedbackClient(url, tok["ann"]) as ann, FeedbackClient(url, tok["bob"]) as bob:
        a = ann.next_tasks(6)
        assert [t["sample_id"] for t in a["tasks"]] == IDS  # in publish order: gold mixed in
        assert a["remaining"] == 6
        b = bob.next_tasks(6)  # one label per sample: the ordinary ones are ann's, gold is for all
        assert [t["sample_id"] for t in b["tasks"]] == list(GOLD) and b["remaining"] == 6  # leased is not labelled
        for t in a["tasks"]:
            ann.post_label(t["sample_id"], "good")
        b = bob.next_tasks(6)
        assert [t["sample_id"] for t in b["tasks"]] == list(GOLD)  # still his: gold is not used up
        # nothing a labeller can read tells a gold task from another: the same fields, the same kinds of value
        shown: dict[str, list] = {}
        leases = {t["sample_id"]: t for t in a["tasks"]}
        for sid in (IDS[0], IDS[1]):  # ordinary, gold
            task = bob._request("GET", f"/v1/tasks/{sid}").json()
            posted = bob.post_label(sid, "bad")
            undone = bob.undo(sid)
            shown[sid] = [
                sorted(task),
                task["votes"],
                task["gold"],
                sorted(leases[sid]),
                sorted(posted),
                sorted(undone),
            ]
            assert "gold" not in posted and "gold" not in undone
        assert shown[IDS[0]] == shown[IDS[1]]
        assert shown[IDS[0]][1:3] == [None, None]
        assert bob.image(IDS[1]) == TASKS[1]["image"]
        with pytest.raises(FeedbackError) as err:  # stats name the gold accuracy of everyone
            bob.stats()
        assert err.value.status_code == 403
    with FeedbackClient(url, ADMIN) as admin:
        assert admin._request("GET", f"/v1/tasks/{IDS[1]}").json()["gold"] == "good"


def test_accuracy_and_agreement_in_stats_and_export(service) -> None:
    url, tok = service
    g, b = list(GOLD)  # answers: good, bad
    votes = {
        "ann": {g: "good", b: "bad", IDS[0]: "good", IDS[2]: "bad"},  # gold 2/2
        "bob": {g: "good", b: "good", IDS[0]: "bad"},  # gold 1/2
        "cy": {g: "skip", b: "bad"},  # gold 1/1 graded, one skip
    }
    for name, mine in votes.items():
        with FeedbackClient(url, tok[name]) as who:
            who.post_labels([{"sample_id": s, "label": v} for s, v in mine.items()])
    with FeedbackClient(url, ADMIN) as admin:
        stats = admin.stats()
        [r0] = stats["rounds"]
        # ordinary tasks only in the round's counts (ann: good+bad on 0 and 2, bob: bad on 0)
        assert (r0["published"], r0["labelled"], r0["good"], r0["bad"], r0["labels"]) == (4, 2, 1, 2, 3)
        assert (r0["pairs"], r0["agreeing_pairs"], r0["gold_tasks"], r0["gold_labels"]) == (1, 0, 2, 6)
        q = {s["labeller"]: s for s in stats["labellers"]}
        assert (q["ann"]["gold_labelled"], q["ann"]["gold_correct"], q["ann"]["gold_accuracy"]) == (2, 2, 1.0)
        assert (q["bob"]["gold_labelled"], q["bob"]["gold_correct"], q["bob"]["gold_accuracy"]) == (2, 1, 0.5)
        assert (q["cy"]["gold_labelled"], q["cy"]["gold_skipped"], q["cy"]["gold_accuracy"]) == (1, 1, 1.0)
        # agreement, pairs with others on the same sample (skips are not votes):
        # ann: g with bob (agree); b with bob (no) and cy (yes); IDS[0] with bob (no) -> 2 of 4
        # bob: g ann (yes); b ann (no), cy (no); IDS[0] ann (no) -> 1 of 4;  cy: b ann (yes), bob (no) -> 1 of 2
        assert [(q[n]["pairs"], q[n]["agreeing_pairs"]) for n in ("ann", "bob", "cy")] == [(4, 2), (4, 1), (2, 1)]
        assert q["ann"]["agreement"] == 0.5 and all(q[n]["registered"] and q[n]["active"] for n in q)
        rows, _ = admin.export_labels()
        assert {r["sample_id"]: r["gold"] for r in rows} == {s: GOLD.get(s) for s in (g, b, IDS[0], IDS[2])}
        for r in rows:
            assert r["labeller_gold_accuracy"] == q[r["labeller"]]["gold_accuracy"]
            assert r["labeller_gold_labelled"] == q[r["labeller"]]["gold_labelled"]
            assert r["labeller_agreement"] == q[r["labeller"]]["agreement"]
        table, _ = admin.export_labels_table()
        assert {"gold", "via", "labeller_gold_accuracy", "labeller_agreement"} <= set(table.column_names)
        assert table.column("sample_id").to_pylist() == [r["sample_id"] for r in rows]
        assert table.column("gold").to_pylist() == [r["gold"] for r in rows]
        assert table.column("labeller_gold_accuracy").to_pylist() == [r["labeller_gold_accuracy"] for r in rows]
        # the loop's labels: gold tasks are measurements of labellers, not training data
        assert aggregate_labels(rows) == {IDS[0]: (0.5, 2), IDS[2]: (0.0, 1)}
        only = admin.stats(round=0)["labellers"]
        assert [s["labeller"] for s in only] == ["ann", "bob", "cy"]


def test_bad_gold_values_are_refused(service) -> None:
    url, _ = service
    hdr = {"Authorization": f"Bearer {ADMIN}"}
    t = {k: v for k, v in demo_tasks(1, seed=42)[0].items() if k not in ("image", "expected_good")}
    t["image_b64"] = base64.b64encode(demo_tasks(1, seed=42)[0]["image"]).decode()
    for gold in ("skip", "great", 1, True):
        r = httpx.post(f"{url}/v1/tasks", json={"tasks": [{**t, "gold": gold}]}, headers=hdr)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "gold", (gold, r.text)
    row = {k: v for k, v in demo_tasks(1, seed=42)[0].items() if k != "expected_good"}
    for column in (pa.array(["maybe"]), pa.array([1])):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([row]).append_column("gold", column), buf)
        r = httpx.post(
            f"{url}/v1/tasks", content=buf.getvalue(), headers={**hdr, "Content-Type": "application/vnd.apache.parquet"}
        )
        assert r.status_code == 422 and "gold" in r.json()["detail"][0]["loc"], r.text
    with FeedbackClient(url, ADMIN) as admin:
        assert admin.stats()["rounds"][0]["gold_tasks"] == 2  # only the fixture's
