"""The feedback store: tasks, images, leases, labels and labellers in SQLite (WAL mode).

Every write goes through one writer thread that commits whatever requests are waiting in a single
transaction (`groupcommit`): with `synchronous=FULL` each commit fsyncs the WAL, so a caller is
answered only once its write is on disk, and concurrent callers share the fsync instead of
queueing behind one each. Reads use per-thread connections; WAL lets them run beside the writer.

This module and its helpers (`store_schema`: tables and migrations; `store_stats`: aggregate
queries; `store_labellers`: accounts) are the only places that know SQL: another database can replace them by
providing the same public methods.

Labeller accounts (`store_labellers`) are mirrored in memory so that authenticating a request
costs no query; this process is the file's only writer (one replica), so the mirror is changed
only by this store, after the commit that changed the table.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from t2i_rlhf.services.groupcommit import GroupCommitWriter, StoreError
from t2i_rlhf.services.store_labellers import Labeller, LabellerAccounts, LabellerConflict, UnknownLabeller
from t2i_rlhf.services.store_schema import migrate
from t2i_rlhf.services.store_stats import labeller_stats, round_stats

logger = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = [
    "LABELS",
    "FeedbackStore",
    "Labeller",
    "LabellerConflict",
    "NewLabel",
    "StoreError",
    "UnknownLabeller",
    "UnknownSample",
]
LABELS = ("good", "bad", "skip")

_LABEL_KEYS = ("label_id", "sample_id", "round", "labeller", "via", "label", "time_spent_ms", "created_at")
_LABEL_COLS = "id, sample_id, round, labeller, via, label, time_spent_ms, created_at"


class UnknownSample(LookupError):
    """A label or image request named a sample that was never published."""

    def __init__(self, sample_ids: Iterable[str]) -> None:
        self.sample_ids = sorted(set(sample_ids))
        super().__init__(f"unknown sample id(s): {', '.join(self.sample_ids[:10])}")


@dataclass(frozen=True)
class NewLabel:
    sample_id: str
    label: str
    labeller: str
    time_spent_ms: int | None = None
    via: str = "unrecorded"  # the kind of token that posted it: labeller_token, shared_token, admin_token


def _label_dict(row: sqlite3.Row) -> dict[str, Any]:
    return dict(zip(_LABEL_KEYS, tuple(row), strict=True))


class FeedbackStore(LabellerAccounts):
    """Durable store for the feedback service. Thread-safe; write methods return after commit."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        wconn = self._connect()
        migrate(wconn)
        self._load_labellers(wconn)
        self._writer = GroupCommitWriter(wconn, name="feedback-store-writer")

    # -- plumbing ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future:
        return self._writer.submit(fn)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._writer.submit(fn).result()

    def close(self) -> None:
        """Stop the writer after it has committed everything queued; close read connections."""
        self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def ping(self) -> bool:
        return self._reader().execute("SELECT 1").fetchone()[0] == 1

    # -- tasks ------------------------------------------------------------------------------
    def publish(self, tasks: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert tasks (sample_id, round, prompt, image, optional category/model_version, and
        gold: the known answer of a gold task). Re-publishing a known sample id is a no-op (its
        gold answer too), so the loop may retry. -> (new, existing)."""
        now = time.time()

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            new = 0
            for t in tasks:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO tasks (sample_id, round, prompt, category, model_version, "
                    "gold, published_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        t["sample_id"],
                        int(t["round"]),
                        t["prompt"],
                        t.get("category"),
                        t.get("model_version"),
                        t.get("gold"),
                        now,
                    ),
                )
                if cur.rowcount:
                    conn.execute("INSERT INTO images (sample_id, png) VALUES (?, ?)", (t["sample_id"], t["image"]))
                    new += 1
            return new, len(tasks) - new

        return self._write(op)

    def task(self, sample_id: str) -> dict[str, Any]:
        row = (
            self._reader()
            .execute(
                "SELECT sample_id, round, prompt, category, model_version, votes, gold, published_at FROM tasks "
                "WHERE sample_id = ?",
                (sample_id,),
            )
            .fetchone()
        )
        if row is None:
            raise UnknownSample([sample_id])
        return dict(row)

    def image(self, sample_id: str) -> bytes:
        row = self._reader().execute("SELECT png FROM images WHERE sample_id = ?", (sample_id,)).fetchone()
        if row is None:
            raise UnknownSample([sample_id])
        return bytes(row[0])

    def lease(self, labeller: str, n: int, k: int, lease_seconds: float, round_: int | None = None) -> dict[str, Any]:
        """Reserve up to `n` tasks for `labeller`: ones it has not labelled, whose good/bad labels
        plus other labellers' live leases are fewer than `k` — or gold tasks, which every
        labeller gets once (each is a measurement of the labeller, so the cap does not apply).
        Its own live leases come back first (a reloaded page gets the same images). Runs in the
        writer, so two callers never race."""

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            now = time.time()
            conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
            open_sql = (
                "FROM tasks t WHERE (t.gold IS NOT NULL OR t.votes < :k) AND (:round IS NULL OR t.round = :round) "
                "AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.sample_id = t.sample_id "
                "  AND l.labeller = :who AND l.retracted_at IS NULL)"
            )
            args = {"k": k, "round": round_, "who": labeller, "n": n}
            rows = conn.execute(
                "SELECT t.sample_id, t.round, t.prompt, "
                "  EXISTS (SELECT 1 FROM leases s WHERE s.sample_id = t.sample_id "
                "    AND s.labeller = :who) AS mine "
                + open_sql
                + " AND (t.gold IS NOT NULL OR t.votes + (SELECT count(*) FROM leases s "
                "  WHERE s.sample_id = t.sample_id AND s.labeller != :who) < :k) ORDER BY mine DESC, t.seq LIMIT :n",
                args,
            ).fetchall()
            expires = now + lease_seconds
            conn.executemany(
                "INSERT OR REPLACE INTO leases (sample_id, labeller, expires_at) VALUES (?, ?, ?)",
                [(r["sample_id"], labeller, expires) for r in rows],
            )
            remaining = conn.execute("SELECT count(*) " + open_sql, args).fetchone()[0]
            done = conn.execute(
                "SELECT count(*) FROM labels WHERE labeller = ? AND retracted_at IS NULL "
                + ("AND round = ?" if round_ is not None else ""),
                (labeller,) if round_ is None else (labeller, round_),
            ).fetchone()[0]
            tasks = [
                {
                    "sample_id": r["sample_id"],
                    "round": r["round"],
                    "prompt": r["prompt"],
                    "lease_expires_at": expires,
                }
                for r in rows
            ]
            return {"tasks": tasks, "done": done, "remaining": remaining}

        return self._write(op)

    # -- labels -----------------------------------------------------------------------------
    def add_labels(self, labels: list[NewLabel]) -> list[tuple[dict[str, Any], bool]]:
        """Store labels atomically. A labeller's second label for a sample is not stored: its first
        (live) label comes back with created=False. Unknown samples fail the whole call."""
        return self.add_labels_future(labels).result()

    def add_labels_future(self, labels: list[NewLabel]) -> Future:
        """`add_labels` without blocking: async callers await the future instead of a thread."""
        now = time.time()

        def op(conn: sqlite3.Connection) -> list[tuple[dict[str, Any], bool]]:
            ids = {lab.sample_id for lab in labels}
            rounds = dict(
                conn.execute(
                    f"SELECT sample_id, round FROM tasks WHERE sample_id IN ({','.join('?' * len(ids))})",
                    tuple(ids),
                ).fetchall()
            )
            if len(rounds) != len(ids):
                raise UnknownSample(ids - set(rounds))
            out = []
            for lab in labels:
                if lab.label not in LABELS:
                    raise ValueError(f"label must be one of {LABELS}, got {lab.label!r}")
                row = conn.execute(
                    f"SELECT {_LABEL_COLS} FROM labels WHERE sample_id = ? AND labeller = ? AND retracted_at IS NULL",
                    (lab.sample_id, lab.labeller),
                ).fetchone()
                if row is not None:
                    out.append((_label_dict(row), False))
                    continue
                cur = conn.execute(
                    "INSERT INTO labels (sample_id, round, labeller, via, label, time_spent_ms, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (lab.sample_id, rounds[lab.sample_id], lab.labeller, lab.via, lab.label, lab.time_spent_ms, now),
                )
                if lab.label != "skip":
                    conn.execute("UPDATE tasks SET votes = votes + 1 WHERE sample_id = ?", (lab.sample_id,))
                conn.execute("DELETE FROM leases WHERE sample_id = ? AND labeller = ?", (lab.sample_id, lab.labeller))
                out.append(
                    (
                        {
                            "label_id": cur.lastrowid,
                            "sample_id": lab.sample_id,
                            "round": rounds[lab.sample_id],
                            "labeller": lab.labeller,
                            "via": lab.via,
                            "label": lab.label,
                            "time_spent_ms": lab.time_spent_ms,
                            "created_at": now,
                        },
                        True,
                    )
                )
            return out

        return self._submit(op)

    def retract(self, sample_id: str, labeller: str) -> dict[str, Any] | None:
        """Undo `labeller`'s live label on a sample (it stays in the table, marked retracted, so the
        history is kept); the sample becomes labellable again. None if there was none."""

        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                f"SELECT {_LABEL_COLS} FROM labels WHERE sample_id = ? AND labeller = ? AND retracted_at IS NULL",
                (sample_id, labeller),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE labels SET retracted_at = ? WHERE id = ?", (time.time(), row["id"]))
            if row["label"] != "skip":
                conn.execute("UPDATE tasks SET votes = votes - 1 WHERE sample_id = ?", (sample_id,))
            return _label_dict(row)

        return self._write(op)

    def export(self, since: int = 0, round_: int | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
        """Live labels with id > since, oldest first, each with its task's gold answer (null for
        ordinary tasks). Ids grow in commit order, so the last id returned is a cursor that never
        skips a label committed later."""
        cols = ", ".join("l." + c for c in _LABEL_COLS.split(", "))
        rows = (
            self._reader()
            .execute(
                f"SELECT {cols}, t.gold FROM labels l JOIN tasks t ON t.sample_id = l.sample_id "
                "WHERE l.id > ? AND l.retracted_at IS NULL AND (? IS NULL OR l.round = ?) ORDER BY l.id LIMIT ?",
                (since, round_, round_, limit),
            )
            .fetchall()
        )
        return [dict(zip((*_LABEL_KEYS, "gold"), tuple(r), strict=True)) for r in rows]

    def stats(self, k: int, round_: int | None = None, rounds: bool = True) -> dict[str, list[dict[str, Any]]]:
        """{"rounds": per-round progress (unless rounds=False), "labellers": per-labeller quality},
        from one snapshot (see `store_stats`)."""
        accounts = {a.name: a for a in self.labellers()}
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            per_round = round_stats(conn, k, round_) if rounds else []
            labellers = labeller_stats(conn, round_, [] if round_ is not None else list(accounts))
        finally:
            conn.execute("COMMIT")
        for s in labellers:
            account = accounts.get(s["labeller"])
            s["registered"], s["active"] = account is not None, account is not None and account.active
        return {"rounds": per_round, "labellers": labellers}

    def live_labels(self, labeller: str) -> int:
        """How many live labels `labeller` has (the page's total)."""
        q = "SELECT count(*) FROM labels WHERE labeller = ? AND retracted_at IS NULL"
        return self._reader().execute(q, (labeller,)).fetchone()[0]
