"""Labeller accounts, the part of `FeedbackStore` that knows who may label as whom.

An account is a name and the sha256 of its token (the token is shown once, on creation or
rotation, and never stored). Names are never reused: a revoked account keeps its name, so the
labels it posted stay attributable, and a name that labels were already posted under with the
shared or admin token cannot become an account (those labels were not posted by its owner).

The accounts are mirrored in memory (`_by_name`, `_by_hash`) so that authenticating a request
costs no query; a change reaches the mirror after its commit and before the call returns.
"""

from __future__ import annotations

import hmac
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


class UnknownLabeller(LookupError):
    """No labeller account by that name."""


class LabellerConflict(ValueError):
    """The name is taken (an account, or labels posted under it with another token), or the
    account is revoked."""


@dataclass(frozen=True)
class Labeller:
    """A labeller account. Only the hash of its token is kept."""

    name: str
    token_sha256: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        """What the admin API shows: never the hash."""
        return {"name": self.name, "created_at": self.created_at, "revoked_at": self.revoked_at, "active": self.active}


class LabellerAccounts:
    """Mixed into FeedbackStore, which provides `_submit` (the group-commit writer)."""

    _by_name: dict[str, Labeller]
    _by_hash: dict[str, Labeller]
    _ids_lock: threading.Lock
    _submit: Callable[[Callable[[sqlite3.Connection], Any]], Future]

    def _load_labellers(self, conn: sqlite3.Connection) -> None:
        self._ids_lock = threading.Lock()
        rows = conn.execute("SELECT name, token_sha256, created_at, revoked_at FROM labellers").fetchall()
        self._by_name = {r[0]: Labeller(*r) for r in rows}
        self._by_hash = {lab.token_sha256: lab for lab in self._by_name.values()}

    def _remember(self, new: Labeller, old: Labeller | None = None) -> Labeller:
        with self._ids_lock:
            if old is not None:
                self._by_hash.pop(old.token_sha256, None)
            self._by_name[new.name] = new
            self._by_hash[new.token_sha256] = new
        return new

    def labeller_by_token(self, token_sha256: str) -> Labeller | None:
        """The account whose token hashes to this (revoked ones too, so the caller can say so)."""
        found = self._by_hash.get(token_sha256)
        if found is None or not hmac.compare_digest(found.token_sha256, token_sha256):
            return None
        return found

    def is_registered(self, name: str) -> bool:
        """Whether `name` is an account (active or revoked): only its own token may label as it."""
        return name in self._by_name

    def labellers(self) -> list[Labeller]:
        with self._ids_lock:  # a copy: another thread may be adding an account
            accounts = list(self._by_name.values())
        return sorted(accounts, key=lambda lab: (lab.created_at, lab.name))

    def create_labeller(self, name: str, token_sha256: str) -> Labeller:
        """A new account. LabellerConflict if the name is an account already or has labels."""

        def op(conn: sqlite3.Connection) -> Labeller:
            if conn.execute("SELECT 1 FROM labellers WHERE name = ?", (name,)).fetchone():
                raise LabellerConflict(f"labeller {name!r} exists already (names are never reused)")
            if conn.execute("SELECT 1 FROM labels WHERE labeller = ? LIMIT 1", (name,)).fetchone():
                raise LabellerConflict(
                    f"labels were already posted as {name!r} with a shared or admin token; choose another name"
                )
            lab = Labeller(name, token_sha256, time.time())
            conn.execute(
                "INSERT INTO labellers (name, token_sha256, created_at) VALUES (?, ?, ?)",
                (lab.name, lab.token_sha256, lab.created_at),
            )
            return lab

        return self._remember(self._submit(op).result())

    def rotate_token(self, name: str, token_sha256: str) -> Labeller:
        """Give an active account a new token; the old one stops working."""

        def op(conn: sqlite3.Connection) -> Labeller:
            old = self._account(conn, name)
            if not old.active:
                raise LabellerConflict(f"labeller {name!r} is revoked")
            conn.execute("UPDATE labellers SET token_sha256 = ? WHERE name = ?", (token_sha256, name))
            return old

        old = self._submit(op).result()
        return self._remember(Labeller(name, token_sha256, old.created_at), old)

    def revoke_labeller(self, name: str) -> Labeller:
        """Revoke an account (idempotent): its token gets 401 from now on and its leases are
        released; its labels stay (the admin decides about them, with the export)."""
        now = time.time()

        def op(conn: sqlite3.Connection) -> Labeller:
            old = self._account(conn, name)
            if not old.active:
                return old
            conn.execute("UPDATE labellers SET revoked_at = ? WHERE name = ?", (now, name))
            conn.execute("DELETE FROM leases WHERE labeller = ?", (name,))
            return Labeller(old.name, old.token_sha256, old.created_at, now)

        return self._remember(self._submit(op).result())

    @staticmethod
    def _account(conn: sqlite3.Connection, name: str) -> Labeller:
        row = conn.execute(
            "SELECT name, token_sha256, created_at, revoked_at FROM labellers WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise UnknownLabeller(f"no labeller named {name!r}")
        return Labeller(*row)
