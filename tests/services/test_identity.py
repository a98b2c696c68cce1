"""Labeller accounts: the admin creates, lists, rotates and revokes them; a label belongs to its
token's owner, so nobody can post, undo or overwrite another's labels; accounts survive a
restart; an older, unversioned database is migrated. Real HTTP against uvicorn on 127.0.0.1 and
the real SQLite store."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore
from t2i_rlhf.services.store_schema import SCHEMA_VERSION, NewerSchema
from tests.services.helpers import demo_tasks, live_server

ADMIN, SHARED = "admin-token-identity", "shared-token-identity"
TASKS = demo_tasks(4, seed=31)
IDS = [t["sample_id"] for t in TASKS]


def _settings(tmp_path: Path, **kw) -> FeedbackSettings:
    return FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN, shared_labeller_tokens=[SHARED], **kw)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with live_server(_settings(tmp_path)) as u, FeedbackClient(u, ADMIN) as admin:
        admin.publish_tasks(TASKS)
        yield u


def _http(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_admin_creates_lists_rotates_and_revokes(url: str, tmp_path: Path) -> None:
    with _http(url, ADMIN) as admin:
        r = admin.post("/v1/labellers", json={"name": "alice"})
        assert r.status_code == 201, r.text
        alice = r.json()
        token = alice["token"]
        assert token.startswith("t2i_lab_") and len(token) > 40 and alice["active"] and alice["revoked_at"] is None
        listed = admin.get("/v1/labellers").json()["labellers"]
        assert listed == [{k: alice[k] for k in ("name", "created_at", "revoked_at", "active")}]  # no token
        # stored hashed: neither the database nor its WAL holds the token, the store holds its sha256
        on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("fb.db*"))
        assert token.encode() not in on_disk
        assert hashlib.sha256(token.encode()).hexdigest().encode() in on_disk
        with _http(url, token) as as_alice:
            assert as_alice.get("/v1/me").json() == {"labeller": "alice", "token": "labeller", "labels": 0}
            assert as_alice.post("/v1/labellers", json={"name": "mallory"}).status_code == 403
            assert as_alice.get("/v1/labellers").status_code == 403
        # names are unique and never reused; default ids of shared tokens are not names
        r = admin.post("/v1/labellers", json={"name": "alice"})
        assert r.status_code == 409 and r.json()["error"] == "conflict"
        for bad in ("token-abc", "has space", "", "x" * 101):
            assert admin.post("/v1/labellers", json={"name": bad}).status_code == 422, bad
        # a lost token: rotate; the old one stops working at once
        bob = admin.post("/v1/labellers", json={"name": "bob"}).json()
        new = admin.post("/v1/labellers/bob/token").json()
        assert new["name"] == "bob" and new["token"] != bob["token"] and new["created_at"] == bob["created_at"]
        assert httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {bob['token']}"}).status_code == 401
        assert httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {new['token']}"}).status_code == 200
        # revoke (DELETE or POST .../revoke, idempotent): 401 with a message, not a silent failure
        gone = admin.delete("/v1/labellers/alice")
        assert gone.status_code == 200 and gone.json()["active"] is False and gone.json()["revoked_at"]
        r = httpx.post(f"{url}/v1/tasks/next", json={}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert admin.post("/v1/labellers/alice/revoke").json() == gone.json()
        assert admin.post("/v1/labellers/alice/token").status_code == 409  # no new token for a revoked account
        r = admin.post("/v1/labellers/nobody/revoke")
        assert r.status_code == 404 and r.json()["error"] == "unknown_labeller"
        assert admin.delete("/v1/labellers/has%20space").status_code == 422
        assert [a["name"] for a in admin.get("/v1/labellers").json()["labellers"]] == ["alice", "bob"]


def test_a_label_is_its_tokens_owners(url: str) -> None:
    with FeedbackClient(url, ADMIN) as admin:
        tok = {n: admin.create_labeller(n)["token"] for n in ("alice", "bob")}
    alice, bob, shared, root = _http(url, tok["alice"]), _http(url, tok["bob"]), _http(url, SHARED), _http(url, ADMIN)
    with alice, bob, shared, root:
        r = bob.post("/v1/labels", json={"sample_id": IDS[0], "label": "good"})
        assert r.status_code == 201 and r.json()["labeller"] == "bob" and r.json()["via"] == "labeller_token"
        # naming oneself is fine; naming anyone else is refused, and nothing is stored
        mine = {"sample_id": IDS[1], "label": "bad", "labeller": "alice"}
        assert alice.post("/v1/labels", json=mine).status_code == 201
        r = alice.post("/v1/labels", json={"sample_id": IDS[0], "label": "bad", "labeller": "bob"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden" and "alice" in r.json()["detail"]
        batch = [{"sample_id": IDS[2], "label": "good"}, {"sample_id": IDS[3], "label": "bad", "labeller": "bob"}]
        assert alice.post("/v1/labels/batch", json={"labels": batch}).status_code == 403
        assert alice.delete(f"/v1/labels/{IDS[0]}", params={"labeller": "bob"}).status_code == 403  # no undo of bob's
        assert alice.post("/v1/tasks/next", json={"labeller": "bob"}).status_code == 403
        assert alice.get("/v1/me", params={"labeller": "bob"}).status_code == 403
        # the shared and admin tokens may name people, but not accounts
        for client in (shared, root):
            r = client.post("/v1/labels", json={"sample_id": IDS[0], "label": "bad", "labeller": "bob"})
            assert r.status_code == 403 and "account" in r.json()["detail"]
            assert client.delete(f"/v1/labels/{IDS[0]}", params={"labeller": "bob"}).status_code == 403
        r = shared.post("/v1/labels", json={"sample_id": IDS[0], "label": "bad", "labeller": "carol"})
        assert r.status_code == 201 and r.json()["via"] == "shared_token"
        r = root.post("/v1/labels", json={"sample_id": IDS[3], "label": "skip"})
        assert r.status_code == 201 and r.json()["via"] == "admin_token" and r.json()["labeller"].startswith("token-")
        # a name labels were posted under with the shared token cannot become an account
        r = root.post("/v1/labellers", json={"name": "carol"})
        assert r.status_code == 409 and "shared" in r.json()["detail"]
        # bob's own undo works, and only his label goes
        assert bob.delete(f"/v1/labels/{IDS[0]}").json()["labeller"] == "bob"
        rows = root.get("/v1/labels").json()["labels"]
        assert [(r["sample_id"], r["labeller"], r["via"]) for r in rows] == [
            (IDS[1], "alice", "labeller_token"),
            (IDS[0], "carol", "shared_token"),
            (IDS[3], rows[2]["labeller"], "admin_token"),
        ]
        assert bob.get("/v1/me").json()["labels"] == 0 and alice.get("/v1/me").json()["labels"] == 1


def test_revoking_releases_leases_and_keeps_labels(url: str) -> None:
    with FeedbackClient(url, ADMIN) as admin:
        tok = {n: admin.create_labeller(n)["token"] for n in ("alice", "bob")}
        with FeedbackClient(url, tok["alice"]) as alice, FeedbackClient(url, tok["bob"]) as bob:
            leased = [t["sample_id"] for t in alice.next_tasks(4)["tasks"]]
            assert leased == IDS and bob.next_tasks(4)["tasks"] == []  # one label per sample: all are alice's
            alice.post_label(IDS[0], "good")
            admin.revoke_labeller("alice")
            assert [t["sample_id"] for t in bob.next_tasks(4)["tasks"]] == IDS[1:]  # her leases went with her
        rows, _ = admin.export_labels()
        assert [(r["sample_id"], r["labeller"]) for r in rows] == [(IDS[0], "alice")]
        quality = {s["labeller"]: s for s in admin.stats()["labellers"]}
        assert quality["alice"]["registered"] and not quality["alice"]["active"] and quality["alice"]["labels"] == 1
        assert quality["bob"]["active"] and quality["bob"]["labels"] == 0


def test_accounts_survive_a_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with live_server(settings) as url, FeedbackClient(url, ADMIN) as admin:
        keep, lose = admin.create_labeller("keep")["token"], admin.create_labeller("lose")["token"]
        admin.revoke_labeller("lose")
    with live_server(settings) as url:
        assert httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {keep}"}).json()["labeller"] == "keep"
        assert httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {lose}"}).status_code == 401


# The schema of the service before it kept versions (store.py at 4eff736): what an existing
# run's feedback.db holds.
OLD_SCHEMA = """
CREATE TABLE tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, sample_id TEXT NOT NULL UNIQUE, round INTEGER NOT NULL,
    prompt TEXT NOT NULL, category TEXT, model_version TEXT, votes INTEGER NOT NULL DEFAULT 0,
    published_at REAL NOT NULL);
CREATE INDEX tasks_open ON tasks (votes, seq);
CREATE INDEX tasks_round ON tasks (round);
CREATE TABLE images (sample_id TEXT PRIMARY KEY, png BLOB NOT NULL);
CREATE TABLE leases (sample_id TEXT NOT NULL, labeller TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (sample_id, labeller));
CREATE TABLE labels (id INTEGER PRIMARY KEY AUTOINCREMENT, sample_id TEXT NOT NULL, round INTEGER NOT NULL,
    labeller TEXT NOT NULL, label TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')), time_spent_ms INTEGER,
    created_at REAL NOT NULL, retracted_at REAL);
CREATE UNIQUE INDEX labels_once ON labels (sample_id, labeller) WHERE retracted_at IS NULL;
CREATE INDEX labels_round ON labels (round, id);
INSERT INTO tasks (sample_id, round, prompt, votes, published_at) VALUES ('old-0', 0, 'one red circle', 1, 1.0),
    ('old-1', 0, 'two blue squares', 0, 1.0);
INSERT INTO images VALUES ('old-0', x'89504e47'), ('old-1', x'89504e47');
INSERT INTO labels (sample_id, round, labeller, label, time_spent_ms, created_at)
    VALUES ('old-0', 0, 'sim-0', 'good', 12, 2.0);
"""


def test_an_unversioned_database_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "fb.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
    with live_server(_settings(tmp_path)) as url, FeedbackClient(url, ADMIN) as admin:
        rows, _ = admin.export_labels()
        assert [(r["sample_id"], r["labeller"], r["via"], r["gold"], r["time_spent_ms"]) for r in rows] == [
            ("old-0", "sim-0", "unrecorded", None, 12)
        ]
        assert admin.create_labeller("sim-0x")["token"]
        r = httpx.post(f"{url}/v1/labellers", json={"name": "sim-0"}, headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 409  # its labels predate accounts: nobody can claim them
        with FeedbackClient(url, SHARED, labeller="ann") as ann:
            assert [t["sample_id"] for t in ann.next_tasks(5)["tasks"]] == ["old-1"]  # old-0 is complete
            assert ann.post_label("old-1", "bad")["via"] == "shared_token"
        assert admin.stats()["rounds"][0]["complete"] == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM labels").fetchone()[0] == 2
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(NewerSchema):  # a file from a newer service is not touched
        FeedbackStore(db)
