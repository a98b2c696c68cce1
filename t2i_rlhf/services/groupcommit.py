"""Group commit for SQLite: one writer thread runs every queued write in a shared transaction.

With `synchronous=FULL` each COMMIT fsyncs the WAL (milliseconds on most disks). Committing
writes one by one would cap the service at one fsync per label; here, whatever arrived while the
previous commit was on its way to disk goes into the next transaction, so concurrent callers
share one fsync. A caller's future resolves only after the COMMIT that holds its write returned —
which is what lets the API answer 2xx only for durable labels.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger(__name__)
MAX_GROUP = 512  # writes per transaction

Op = Callable[[sqlite3.Connection], Any]


class StoreError(RuntimeError):
    """The database could not commit (disk full, I/O error...): a server-side failure, not bad input."""


class GroupCommitWriter:
    """Owns the only writing connection. `submit(op)` -> Future of op's result, set after commit.
    An op that raises is rolled back to its savepoint alone; the rest of its group still commits."""

    def __init__(self, conn: sqlite3.Connection, name: str = "sqlite-group-commit") -> None:
        self._conn = conn
        self._queue: queue.Queue[tuple[Op, Future] | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, op: Op) -> Future:
        if self._closed:
            raise StoreError("store is closed")
        fut: Future = Future()
        self._queue.put((op, fut))
        return fut

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything already queued, then stop."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            group = [item]
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this group, then stop
                    break
                group.append(nxt)
            self._commit(group)
        self._conn.close()

    def _commit(self, group: list[tuple[Op, Future]]) -> None:
        conn = self._conn
        outcomes: list[tuple[Future, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, fut in group:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((fut, op(conn), None))
                except Exception as e:  # one bad request must not sink the others in its group
                    conn.execute("ROLLBACK TO op")
                    outcomes.append((fut, None, e))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            logger.exception("group commit of %d writes failed", len(group))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, fut in group:
                fut.set_exception(StoreError(f"database write failed: {e}"))
            return
        for fut, result, err in outcomes:  # only now is every write of the group on disk
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(result)
