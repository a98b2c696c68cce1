"""The feedback store's SQLite schema and its migrations, numbered by `PRAGMA user_version`.

Version 0 is the schema every database had before versions were kept (a file made by an older
service opens as version 0); each later version is a list of statements that takes a version-n
database to n+1. A new database is created as version 0 and migrated like an old one, so both go
through the same code. Opening a database migrates it in one IMMEDIATE transaction: a crash half
way leaves the old version intact, and two processes opening the same file cannot both migrate.
"""

from __future__ import annotations

import logging
import sqlite3

logger = logging.getLogger(__name__)

V0 = (
    """CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sample_id TEXT NOT NULL UNIQUE,
    round INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    category TEXT,
    model_version TEXT,
    votes INTEGER NOT NULL DEFAULT 0,  -- active good/bad labels, kept in step with `labels`
    published_at REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS tasks_open ON tasks (votes, seq)",
    "CREATE INDEX IF NOT EXISTS tasks_round ON tasks (round)",
    "CREATE TABLE IF NOT EXISTS images (sample_id TEXT PRIMARY KEY, png BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS leases (
    sample_id TEXT NOT NULL, labeller TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (sample_id, labeller)
)""",
    """CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the export cursor: ids are assigned in commit order
    sample_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    labeller TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')),
    time_spent_ms INTEGER,
    created_at REAL NOT NULL,
    retracted_at REAL
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS labels_once ON labels (sample_id, labeller) WHERE retracted_at IS NULL",
    "CREATE INDEX IF NOT EXISTS labels_round ON labels (round, id)",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: labellers with their own (hashed) tokens; each label records which kind of token posted
    # it ('unrecorded' for labels from before); gold tasks carry their known answer.
    (
        """CREATE TABLE labellers (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,  -- sha256 hex of the token; the token itself is never stored
    created_at REAL NOT NULL,
    revoked_at REAL
)""",
        "ALTER TABLE labels ADD COLUMN via TEXT NOT NULL DEFAULT 'unrecorded'",
        "ALTER TABLE tasks ADD COLUMN gold TEXT CHECK (gold IN ('good', 'bad'))",
        "CREATE INDEX labels_labeller ON labels (labeller)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class NewerSchema(RuntimeError):
    """The file was written by a newer service: opening it with this one could corrupt it."""


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the database on `conn` (autocommit mode) to SCHEMA_VERSION -> (from, to)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in V0:
            conn.execute(stmt)
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise NewerSchema(f"feedback database has schema {found}; this service knows up to {SCHEMA_VERSION}")
        for version in range(found, SCHEMA_VERSION):
            for stmt in MIGRATIONS[version]:
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if found != SCHEMA_VERSION:
        logger.info("feedback store: schema %d -> %d", found, SCHEMA_VERSION)
    return found, SCHEMA_VERSION
