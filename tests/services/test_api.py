"""Feedback service API: every endpoint's success and error paths, auth, idempotency, leases,
undo, export cursors and stats — in-process (TestClient) against a real SQLite file."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from t2i_rlhf.services.app import create_app
from t2i_rlhf.services.settings import FeedbackSettings
from tests.services.helpers import demo_tasks

ADMIN, LAB = "admin-token-123", "labeller-token-1"
A = {"Authorization": f"Bearer {ADMIN}"}
L = {"Authorization": f"Bearer {LAB}"}
TASKS = demo_tasks(6, round=0) + demo_tasks(2, round=1, seed=7)
IDS = [t["sample_id"] for t in TASKS]


def _json_task(t: dict) -> dict:
    return {
        "sample_id": t["sample_id"],
        "round": t["round"],
        "prompt": t["prompt"],
        "category": t["category"],
        "image_b64": base64.b64encode(t["image"]).decode(),
    }


def _make(tmp_path: Path, **kw) -> TestClient:
    settings = FeedbackSettings(db_path=tmp_path / "feedback.db", admin_token=ADMIN, labeller_tokens=[LAB], **kw)
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with _make(tmp_path) as c:
        yield c


@pytest.fixture
def published(client: TestClient) -> TestClient:
    r = client.post("/v1/tasks", json={"tasks": [_json_task(t) for t in TASKS]}, headers=A)
    assert r.status_code == 201, r.text
    return client


def label(c: TestClient, sid: str, value: str, who: str | None = None, **kw):
    body = {"sample_id": sid, "label": value, **kw}
    if who:
        body["labeller"] = who
    return c.post("/v1/labels", json=body, headers=L)


# -- health, openapi, page ------------------------------------------------------------------------
def test_health_openapi_and_page_need_no_token(client: TestClient) -> None:
    assert client.get("/v1/health").json() == {"status": "ok", "database": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/tasks",
        "/v1/tasks/next",
        "/v1/tasks/{sample_id}",
        "/v1/tasks/{sample_id}/image",
        "/v1/labels",
        "/v1/labels/batch",
        "/v1/labels/{sample_id}",
        "/v1/stats",
        "/v1/health",
    ):
        assert p in paths
    page = client.get("/")
    assert page.status_code == 200 and 'id="prompt"' in page.text and "static/app.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert "keydown" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200


# -- auth -------------------------------------------------------------------------------------------
PROTECTED = [
    ("POST", "/v1/tasks", {"tasks": []}),
    ("POST", "/v1/tasks/next", {}),
    ("GET", "/v1/tasks/x", None),
    ("GET", "/v1/tasks/x/image", None),
    ("POST", "/v1/labels", {}),
    ("POST", "/v1/labels/batch", {}),
    ("DELETE", "/v1/labels/x", None),
    ("GET", "/v1/labels", None),
    ("GET", "/v1/stats", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_or_wrong_token_is_401(client: TestClient, method: str, path: str, body) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {LAB}"}):
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"


def test_labeller_token_cannot_publish_or_export(published: TestClient) -> None:
    r = published.post("/v1/tasks", json={"tasks": [_json_task(TASKS[0])]}, headers=L)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert published.get("/v1/labels", headers=L).status_code == 403
    assert published.get("/v1/labels?format=parquet", headers=L).status_code == 403
    # ... but the admin token may label too
    assert published.post("/v1/labels", json={"sample_id": IDS[0], "label": "good"}, headers=A).status_code == 201


# -- publishing -------------------------------------------------------------------------------------
def test_publish_json_is_idempotent(client: TestClient) -> None:
    body = {"tasks": [_json_task(t) for t in TASKS[:3]]}
    assert client.post("/v1/tasks", json=body, headers=A).json() == {"published": 3, "existing": 0}
    body["tasks"].append(_json_task(TASKS[3]))
    r = client.post("/v1/tasks", json=body, headers=A)
    assert r.status_code == 201 and r.json() == {"published": 1, "existing": 3}
    task = client.get(f"/v1/tasks/{IDS[0]}", headers=A).json()
    assert task["prompt"] == TASKS[0]["prompt"] and task["round"] == 0 and task["votes"] == 0
    assert task["gold"] is None
    as_labeller = client.get(f"/v1/tasks/{IDS[0]}", headers=L).json()
    assert as_labeller == {**task, "votes": None}  # vote counts are the admin's: they would betray gold tasks


def test_publish_parquet_with_sample_schema_columns(client: TestClient) -> None:
    table = pa.Table.from_pylist([{**t, "seed": 1, "latents": [0.0, 1.0]} for t in TASKS[:4]])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    hdr = {**A, "Content-Type": "application/vnd.apache.parquet"}
    r = client.post("/v1/tasks", content=buf.getvalue(), headers=hdr)
    assert r.status_code == 201 and r.json() == {"published": 4, "existing": 0}
    assert client.get(f"/v1/tasks/{IDS[1]}/image", headers=L).content == TASKS[1]["image"]
    r = client.post("/v1/tasks", content=b"PAR1 not really", headers=hdr)
    assert r.status_code == 400 and "Parquet" in r.json()["detail"]
    buf = io.BytesIO()
    pq.write_table(table.drop_columns(["image"]), buf)
    r = client.post("/v1/tasks", content=buf.getvalue(), headers=hdr)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image"]  # 422s: a list of {loc, msg}
    buf = io.BytesIO()
    pq.write_table(table.set_column(table.column_names.index("image"), "image", pa.array([b"xx"] * 4)), buf)
    assert client.post("/v1/tasks", content=buf.getvalue(), headers=hdr).status_code == 422


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda t: t.update(image_b64="!!notbase64"), "image_b64"),
        (lambda t: t.update(image_b64=base64.b64encode(b"GIF89a....").decode()), "image_b64"),
        (lambda t: t.update(round="first"), "round"),
        (lambda t: t.update(round=-1), "round"),
        (lambda t: t.pop("prompt"), "prompt"),
        (lambda t: t.update(colour="red"), "colour"),
    ],
)
def test_publish_rejects_bad_tasks(client: TestClient, mutate, where: str) -> None:
    task = _json_task(TASKS[0])
    mutate(task)
    r = client.post("/v1/tasks", json={"tasks": [task]}, headers=A)
    assert r.status_code == 422, r.text
    assert any(where in e["loc"] for e in r.json()["detail"])


def test_publish_other_bad_requests(client: TestClient) -> None:
    r = client.post("/v1/tasks", json={"tasks": []}, headers=A)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "tasks"]
    r = client.post("/v1/tasks", content=b'{"tasks": [', headers={**A, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_json"
    r = client.post("/v1/tasks", content=b"tasks", headers={**A, "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert client.get("/v1/stats", headers=A).json()["rounds"] == []  # nothing stored by the failures
    # an id twice in one request is what it is across requests: the first is stored, the second is existing
    dup = _json_task(TASKS[0])
    r = client.post("/v1/tasks", json={"tasks": [dup, {**dup, "prompt": "another prompt"}]}, headers=A)
    assert r.status_code == 201 and r.json() == {"published": 1, "existing": 1}
    assert client.get(f"/v1/tasks/{IDS[0]}", headers=A).json()["prompt"] == TASKS[0]["prompt"]


def test_task_and_image_unknown_sample_is_404(published: TestClient) -> None:
    r = published.get(f"/v1/tasks/{IDS[2]}/image", headers=L)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == TASKS[2]["image"]
    for path in ("/v1/tasks/nope", "/v1/tasks/nope/image"):
        r = published.get(path, headers=L)
        assert r.status_code == 404 and r.json()["error"] == "unknown_sample"


# -- leases -----------------------------------------------------------------------------------------
def test_leases_keep_labellers_apart_and_come_back(published: TestClient) -> None:
    a = published.post("/v1/tasks/next", json={"n": 3, "labeller": "ann"}, headers=L).json()
    b = published.post("/v1/tasks/next", json={"n": 10, "labeller": "bob"}, headers=L).json()
    a_ids = [t["sample_id"] for t in a["tasks"]]
    b_ids = [t["sample_id"] for t in b["tasks"]]
    assert a_ids == IDS[:3] and set(b_ids) == set(IDS[3:])
    assert a["remaining"] == len(IDS) and a["done"] == 0 and a["labeller"] == "ann"
    assert a["tasks"][0]["image_url"].endswith(f"/v1/tasks/{IDS[0]}/image")
    # a reloaded page gets its own leases back first; nothing is left for a third labeller
    again = published.post("/v1/tasks/next", json={"n": 2, "labeller": "ann"}, headers=L).json()
    assert [t["sample_id"] for t in again["tasks"]] == IDS[:2]
    assert published.post("/v1/tasks/next", json={"n": 5, "labeller": "cy"}, headers=L).json()["tasks"] == []
    # labelled tasks are not handed out again; progress counts them
    assert label(published, IDS[0], "good", "ann").status_code == 201
    nxt = published.post("/v1/tasks/next", json={"n": 5, "labeller": "ann"}, headers=L).json()
    assert IDS[0] not in [t["sample_id"] for t in nxt["tasks"]]
    assert nxt["done"] == 1 and nxt["remaining"] == len(IDS) - 1
    r1 = published.post("/v1/tasks/next", json={"n": 5, "labeller": "dee", "round": 1}, headers=L).json()
    assert r1["tasks"] == [] and r1["remaining"] == 2  # round 1 tasks are all leased by bob


def test_leases_expire_and_several_labels_per_sample(tmp_path: Path) -> None:
    with _make(tmp_path, lease_seconds=0.3, labels_per_sample=2) as c:
        c.post("/v1/tasks", json={"tasks": [_json_task(t) for t in TASKS[:2]]}, headers=A)

        def ids(who: str) -> list[str]:
            got = c.post("/v1/tasks/next", json={"n": 5, "labeller": who}, headers=L).json()
            return [t["sample_id"] for t in got["tasks"]]

        assert ids("ann") == IDS[:2] and ids("bob") == IDS[:2]  # two labels wanted: both get them
        assert ids("cy") == []
        time.sleep(0.4)
        assert ids("cy") == IDS[:2]  # ann's and bob's leases expired
        # a skip does not use up a slot: another labeller still gets the task
        label(c, IDS[0], "skip", "cy")
        label(c, IDS[0], "good", "ann")
        time.sleep(0.4)
        assert ids("dee") == IDS[:2]


def test_lease_request_validation(published: TestClient) -> None:
    for body in ({"n": 0}, {"n": 101}, {"n": "many"}, {"labeller": "has space"}, {"round": -2}, {"x": 1}):
        r = published.post("/v1/tasks/next", json=body, headers=L)
        assert r.status_code == 422, body


# -- labels -----------------------------------------------------------------------------------------
def test_label_is_idempotent_per_labeller(published: TestClient) -> None:
    r = label(published, IDS[0], "good", "ann", time_spent_ms=1200)
    assert r.status_code == 201
    first = r.json()
    assert first["created"] is True and first["label"] == "good" and first["time_spent_ms"] == 1200
    again = label(published, IDS[0], "bad", "ann")  # a retry, or a change of mind: the first label stands
    assert again.status_code == 200
    assert again.json() == {**first, "created": False}
    assert label(published, IDS[0], "bad", "bob").status_code == 201
    rows = published.get("/v1/labels", headers=A).json()["labels"]
    assert [(r["labeller"], r["label"]) for r in rows] == [("ann", "good"), ("bob", "bad")]


def test_label_defaults_labeller_to_token_id(published: TestClient) -> None:
    r = published.post("/v1/labels", json={"sample_id": IDS[0], "label": "skip"}, headers=L)
    assert r.status_code == 201 and r.json()["labeller"].startswith("token-")
    assert LAB not in r.json()["labeller"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"sample_id": "unknown", "label": "good"}, 404),
        ({"sample_id": IDS[0], "label": "great"}, 422),
        ({"sample_id": IDS[0], "label": 1}, 422),
        ({"sample_id": IDS[0]}, 422),
        ({"sample_id": IDS[0], "label": "good", "time_spent_ms": "slow"}, 422),
        ({"sample_id": IDS[0], "label": "good", "time_spent_ms": -5}, 422),
        ({"sample_id": "", "label": "good"}, 422),
        ([{"sample_id": IDS[0], "label": "good"}], 422),
    ],
)
def test_label_bad_input_is_4xx(published: TestClient, body, status: int) -> None:
    r = published.post("/v1/labels", json=body, headers=L)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_label_malformed_json_is_400(published: TestClient) -> None:
    r = published.post("/v1/labels", content=b'{"sample_id": ', headers={**L, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {
        "error": "malformed_json",
        "detail": "request body is not valid JSON",
    }


def test_batch_labels_atomic_and_idempotent(tmp_path: Path) -> None:
    with _make(tmp_path, max_batch=4) as c:
        c.post("/v1/tasks", json={"tasks": [_json_task(t) for t in TASKS]}, headers=A)
        batch = [
            {"sample_id": s, "label": v, "labeller": "ann"}
            for s, v in zip(IDS[:3], ("good", "bad", "skip"), strict=True)
        ]
        r = c.post("/v1/labels/batch", json={"labels": batch}, headers=L)
        assert r.status_code == 200 and r.json()["created"] == 3 and r.json()["existing"] == 0
        r = c.post("/v1/labels/batch", json={"labels": batch[1:] + [{**batch[0], "sample_id": IDS[3]}]}, headers=L)
        assert r.json()["created"] == 1 and r.json()["existing"] == 2
        assert [x["created"] for x in r.json()["results"]] == [False, False, True]
        unknown = [
            {"sample_id": IDS[4], "label": "good", "labeller": "ann"},
            {"sample_id": "ghost", "label": "good", "labeller": "ann"},
        ]
        r = c.post("/v1/labels/batch", json={"labels": unknown}, headers=L)
        assert r.status_code == 404 and "ghost" in r.json()["detail"]
        assert len(c.get("/v1/labels", headers=A).json()["labels"]) == 4  # IDS[4] was not stored either
        assert c.post("/v1/labels/batch", json={"labels": []}, headers=L).status_code == 422
        assert c.post("/v1/labels/batch", json={"labels": batch * 2}, headers=L).status_code == 422  # > max
        # in order, as if posted one by one: a second label on a sample is not stored, the first comes back
        twice = [
            {"sample_id": IDS[5], "label": "good", "labeller": "bob"},
            {"sample_id": IDS[5], "label": "bad", "labeller": "bob"},
        ]
        r = c.post("/v1/labels/batch", json={"labels": twice}, headers=L)
        assert r.status_code == 200 and (r.json()["created"], r.json()["existing"]) == (1, 1)
        assert [(x["label"], x["created"]) for x in r.json()["results"]] == [("good", True), ("good", False)]
        assert c.post("/v1/labels/batch", json={"labels": [{"sample_id": IDS[5]}]}, headers=L).status_code == 422


def test_undo_frees_the_sample_and_hides_the_label(published: TestClient) -> None:
    first = label(published, IDS[0], "bad", "ann").json()
    r = published.delete(f"/v1/labels/{IDS[0]}?labeller=ann", headers=L)
    assert r.status_code == 200 and r.json()["label_id"] == first["label_id"] and r.json()["label"] == "bad"
    assert published.get("/v1/labels", headers=A).json()["labels"] == []
    assert published.get("/v1/stats", headers=A).json()["rounds"][0]["labelled"] == 0
    second = label(published, IDS[0], "good", "ann")
    assert second.status_code == 201 and second.json()["label_id"] > first["label_id"]
    r = published.delete(f"/v1/labels/{IDS[1]}?labeller=ann", headers=L)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert published.delete(f"/v1/labels/{IDS[0]}?labeller=bob", headers=L).status_code == 404


# -- export -----------------------------------------------------------------------------------------
def test_export_cursor_round_and_parquet(published: TestClient) -> None:
    for i, sid in enumerate(IDS):
        label(published, sid, ("good", "bad", "skip")[i % 3], "ann", time_spent_ms=i)
    page1 = published.get("/v1/labels?limit=3", headers=A).json()
    assert [r["sample_id"] for r in page1["labels"]] == IDS[:3]
    page2 = published.get(f"/v1/labels?since={page1['next_cursor']}", headers=A).json()
    assert [r["sample_id"] for r in page2["labels"]] == IDS[3:]
    empty = published.get(f"/v1/labels?since={page2['next_cursor']}", headers=A).json()
    assert empty == {"labels": [], "next_cursor": page2["next_cursor"]}
    r1 = published.get("/v1/labels?round=1", headers=A).json()["labels"]
    assert [r["sample_id"] for r in r1] == IDS[6:] and {r["round"] for r in r1} == {1}
    r = published.get("/v1/labels?format=parquet&round=0", headers=A)
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(r.content))
    assert table.column("sample_id").to_pylist() == IDS[:6]
    assert table.column("label").to_pylist() == ["good", "bad", "skip"] * 2
    assert r.headers["x-next-cursor"] == str(table.column("label_id").to_pylist()[-1])
    for bad in ("since=abc", "since=-1", "limit=0", "round=x", "format=csv"):
        assert published.get(f"/v1/labels?{bad}", headers=A).status_code == 422, bad


# -- stats ------------------------------------------------------------------------------------------
def test_stats_counts_and_agreement(tmp_path: Path) -> None:
    with _make(tmp_path, labels_per_sample=3) as c:
        c.post("/v1/tasks", json={"tasks": [_json_task(t) for t in TASKS]}, headers=A)
        for who, v in (("a", "good"), ("b", "good"), ("c", "bad")):
            label(c, IDS[0], v, who)
        for who, v in (("a", "bad"), ("b", "bad"), ("c", "skip")):
            label(c, IDS[1], v, who)
        label(c, IDS[2], "good", "a")
        label(c, IDS[6], "skip", "a")
        assert c.get("/v1/stats", headers=L).status_code == 403  # it names labellers and their gold accuracy
        s = c.get("/v1/stats", headers=A).json()
        assert s["labels_per_sample"] == 3
        r0, r1 = s["rounds"]
        assert (r0["round"], r0["published"], r0["labelled"], r0["complete"]) == (0, 6, 3, 1)
        assert (r0["good"], r0["bad"], r0["skipped"], r0["labels"]) == (3, 3, 1, 7)
        # sample 0: pairs ab agree, ac/bc disagree; sample 1: one agreeing pair (the skip is not a vote)
        assert (r0["pairs"], r0["agreeing_pairs"]) == (4, 2) and r0["agreement"] == pytest.approx(0.5)
        assert (r1["published"], r1["labelled"], r1["skipped"], r1["agreement"]) == (2, 0, 1, None)
        only1 = c.get("/v1/stats?round=1", headers=A).json()["rounds"]
        assert only1 == [r1]
        assert c.get("/v1/stats?round=-1", headers=A).status_code == 422


# -- limits and settings ----------------------------------------------------------------------------
def test_oversized_body_is_413(tmp_path: Path) -> None:
    with _make(tmp_path, max_body_bytes=4096) as c:
        big = {"tasks": [_json_task(TASKS[0]) | {"prompt": "x" * 5000}]}
        r = c.post("/v1/tasks", json=big, headers=A)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        chunks = iter([b'{"labels": [' + b" " * 3000, b" " * 3000 + b"]}"])  # streamed, no Content-Length
        r = c.post("/v1/labels/batch", content=chunks, headers={**L, "Content-Type": "application/json"})
        assert r.status_code == 413
        assert c.get("/v1/health").status_code == 200


def test_settings_from_env() -> None:
    env = {
        "T2I_FEEDBACK_ADMIN_TOKEN": "a" * 10,
        "T2I_FEEDBACK_LABELLER_TOKENS": "b" * 8 + ", " + "c" * 9,
        "T2I_FEEDBACK_LABELS_PER_SAMPLE": "2",
        "T2I_FEEDBACK_DB_PATH": "/tmp/x.db",
    }
    s = FeedbackSettings.from_env(env, lease_seconds=9.0, max_batch=None)
    assert s.shared_labeller_tokens == ["b" * 8, "c" * 9] and s.labels_per_sample == 2 and s.lease_seconds == 9.0
    assert str(s.db_path) == "/tmp/x.db" and s.synchronous == "FULL" and s.max_batch == 1000
    with pytest.raises(ValueError, match="at least 8"):
        FeedbackSettings.from_env(env, labeller_tokens=["short"])
    # the new name wins over the old one, in the environment and as an argument
    new = FeedbackSettings.from_env({**env, "T2I_FEEDBACK_SHARED_LABELLER_TOKENS": "d" * 8})
    assert new.shared_labeller_tokens == ["d" * 8]
    assert FeedbackSettings(admin_token="a" * 8, labeller_tokens=["e" * 8]).shared_labeller_tokens == ["e" * 8]
    assert FeedbackSettings.from_env(env, shared_labeller_tokens=["f" * 8]).shared_labeller_tokens == ["f" * 8]
    with pytest.raises(ValueError):
        FeedbackSettings.from_env({})  # no admin token


def test_store_failure_is_503_not_500(tmp_path: Path) -> None:
    with _make(tmp_path) as c:
        c.post("/v1/tasks", json={"tasks": [_json_task(TASKS[0])]}, headers=A)
        c.app.state.store.close()  # the writer is gone: nothing can be made durable
        r = c.post("/v1/labels", json={"sample_id": IDS[0], "label": "good"}, headers=L)
        assert r.status_code == 503 and r.json()["error"] == "unavailable" and r.headers["retry-after"] == "1"


def test_group_commit_isolates_a_failing_write(tmp_path: Path) -> None:
    import sqlite3
    from concurrent.futures import wait

    from t2i_rlhf.services.groupcommit import GroupCommitWriter, StoreError

    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    w = GroupCommitWriter(conn)

    def insert(x: int):
        return lambda c: c.execute("INSERT INTO t VALUES (?)", (x,)).lastrowid

    futs = [w.submit(insert(x)) for x in (1, 2, 2, 3)]  # the second 2 violates UNIQUE
    wait(futs, timeout=30)
    assert [f.exception() is None for f in futs] == [True, True, False, True]
    assert isinstance(futs[2].exception(), sqlite3.IntegrityError)
    w.close()
    with pytest.raises(StoreError):
        w.submit(insert(4))
    check = sqlite3.connect(tmp_path / "g.db")
    assert [r[0] for r in check.execute("SELECT x FROM t ORDER BY x")] == [1, 2, 3]
