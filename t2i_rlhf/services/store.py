"""The feedback store: tasks, images, leases and labels in SQLite (WAL mode).

Every write goes through one writer thread that commits whatever requests are waiting in a single
transaction (`groupcommit`): with `synchronous=FULL` each commit fsyncs the WAL, so a caller is
answered only once its write is on disk, and concurrent callers share the fsync instead of
queueing behind one each. Reads use per-thread connections; WAL lets them run beside the writer.

This module is the only place that knows SQL: another database can replace it by providing the
same public methods.
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

logger = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = ["LABELS", "FeedbackStore", "NewLabel", "StoreError", "UnknownSample"]
LABELS = ("good", "bad", "skip")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sample_id TEXT NOT NULL UNIQUE,
    round INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    category TEXT,
    model_version TEXT,
    votes INTEGER NOT NULL DEFAULT 0,  -- active good/bad labels, kept in step with `labels`
    published_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (votes, seq);
CREATE INDEX IF NOT EXISTS tasks_round ON tasks (round);
CREATE TABLE IF NOT EXISTS images (sample_id TEXT PRIMARY KEY, png BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    sample_id TEXT NOT NULL, labeller TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (sample_id, labeller)
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the export cursor: ids are assigned in commit order
    sample_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    labeller TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')),
    time_spent_ms INTEGER,
    created_at REAL NOT NULL,
    retracted_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS labels_once ON labels (sample_id, labeller) WHERE retracted_at IS NULL;
CREATE INDEX IF NOT EXISTS labels_round ON labels (round, id);
"""

_LABEL_COLS = "id, sample_id, round, labeller, label, time_spent_ms, created_at"


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


def _label_dict(row: sqlite3.Row) -> dict[str, Any]:
    return dict(
        zip(
            ("label_id", "sample_id", "round", "labeller", "label", "time_spent_ms", "created_at"),
            tuple(row),
            strict=True,
        )
    )


class FeedbackStore:
    """Durable store for the feedback service. Thread-safe; write methods return after commit."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        wconn = self._connect()
        wconn.executescript(_SCHEMA)
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
        """Insert tasks (sample_id, round, prompt, image, optional category/model_version).
        Re-publishing a known sample id is a no-op, so the loop may retry. -> (new, existing)."""
        now = time.time()

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            new = 0
            for t in tasks:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO tasks (sample_id, round, prompt, category, model_version, "
                    "published_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        t["sample_id"],
                        int(t["round"]),
                        t["prompt"],
                        t.get("category"),
                        t.get("model_version"),
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
                "SELECT sample_id, round, prompt, category, model_version, votes, published_at FROM tasks "
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
        plus other labellers' live leases are fewer than `k`. Its own live leases come back first
        (a reloaded page gets the same images). Runs in the writer, so two callers never race."""

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            now = time.time()
            conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
            open_sql = (
                "FROM tasks t WHERE t.votes < :k AND (:round IS NULL OR t.round = :round) "
                "AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.sample_id = t.sample_id "
                "  AND l.labeller = :who AND l.retracted_at IS NULL)"
            )
            args = {"k": k, "round": round_, "who": labeller, "n": n}
            rows = conn.execute(
                "SELECT t.sample_id, t.round, t.prompt, "
                "  EXISTS (SELECT 1 FROM leases s WHERE s.sample_id = t.sample_id "
                "    AND s.labeller = :who) AS mine "
                + open_sql
                + " AND t.votes + (SELECT count(*) FROM leases s WHERE s.sample_id = t.sample_id "
                "  AND s.labeller != :who) < :k ORDER BY mine DESC, t.seq LIMIT :n",
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
                    "INSERT INTO labels (sample_id, round, labeller, label, time_spent_ms, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (lab.sample_id, rounds[lab.sample_id], lab.labeller, lab.label, lab.time_spent_ms, now),
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
        """Live labels with id > since, oldest first. Ids grow in commit order, so the last id
        returned is a cursor that never skips a label committed later."""
        rows = (
            self._reader()
            .execute(
                f"SELECT {_LABEL_COLS} FROM labels WHERE id > ? AND retracted_at IS NULL "
                "AND (? IS NULL OR round = ?) ORDER BY id LIMIT ?",
                (since, round_, round_, limit),
            )
            .fetchall()
        )
        return [_label_dict(r) for r in rows]

    def stats(self, k: int, round_: int | None = None) -> list[dict[str, Any]]:
        """Per round: published, labelled (>=1 good/bad), complete (>=k), label counts, and
        pairwise agreement between labellers on samples with several good/bad labels."""
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot for all three queries
        try:
            where, args = ("WHERE round = ?", (round_,)) if round_ is not None else ("", ())
            per: dict[int, dict[str, Any]] = {}
            for r in conn.execute(
                f"SELECT round, count(*), sum(votes > 0), sum(votes >= ?) FROM tasks {where} GROUP BY round",
                (k, *args),
            ):
                per[r[0]] = {
                    "round": r[0],
                    "published": r[1],
                    "labelled": r[2],
                    "complete": r[3],
                    "good": 0,
                    "bad": 0,
                    "skipped": 0,
                    "agreeing_pairs": 0,
                    "pairs": 0,
                }
            lw = "WHERE retracted_at IS NULL" + (" AND round = ?" if round_ is not None else "")
            for r in conn.execute(f"SELECT round, label, count(*) FROM labels {lw} GROUP BY round, label", args):
                if r[0] in per:
                    per[r[0]]["skipped" if r[1] == "skip" else r[1]] = r[2]
            for r in conn.execute(
                f"SELECT round, sum(label = 'good'), sum(label = 'bad') FROM labels {lw} AND label != 'skip' "
                "GROUP BY round, sample_id HAVING count(*) >= 2",
                args,
            ):
                g, b = r[1], r[2]
                if r[0] in per:
                    per[r[0]]["agreeing_pairs"] += g * (g - 1) // 2 + b * (b - 1) // 2
                    per[r[0]]["pairs"] += (g + b) * (g + b - 1) // 2
        finally:
            conn.execute("COMMIT")
        for s in per.values():
            s["labels"] = s["good"] + s["bad"] + s["skipped"]
            s["agreement"] = s["agreeing_pairs"] / s["pairs"] if s["pairs"] else None
        return [per[r] for r in sorted(per)]
