"""The job store's SQLite file: its schema, the migrations of stores made by earlier releases, and
the one connection every part of the store shares (WAL mode, every write committed before it
returns). sqlite3's errors end here: the rest of the node sees StoreError, or StoreFull when the
disk is full (an OSError with ENOSPC, so that "retry later" code treats it like any full disk).
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from ..config import Compression, Policy
from .states import ObjectKind

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid    TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    calling_ae       TEXT NOT NULL,
    site             TEXT NOT NULL,
    policy           TEXT NOT NULL,
    spool_path       TEXT NOT NULL,
    bytes            INTEGER NOT NULL,
    state            TEXT NOT NULL,
    outputs          TEXT NOT NULL DEFAULT '[]',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL DEFAULT 0,
    error            TEXT NOT NULL DEFAULT '',
    received_at      REAL NOT NULL,
    updated_at       REAL NOT NULL,
    worker_deaths    INTEGER NOT NULL DEFAULT 0,
    kind             TEXT NOT NULL DEFAULT 'image',
    purged_at        REAL NOT NULL DEFAULT 0,
    achieved_cr      REAL
);
CREATE INDEX IF NOT EXISTS by_state ON instances (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS by_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid        TEXT PRIMARY KEY,
    site             TEXT NOT NULL,
    state            TEXT NOT NULL,
    last_received_at REAL NOT NULL,
    error            TEXT NOT NULL DEFAULT '',
    updated_at       REAL NOT NULL,
    worker_deaths    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL DEFAULT 0,
    probabilities    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS studies_by_time ON studies (updated_at);
"""
# Columns added after the first release: (table, column, declaration) for stores made before.
ADDED_COLUMNS = (
    ("instances", "worker_deaths", "INTEGER NOT NULL DEFAULT 0"),
    ("studies", "worker_deaths", "INTEGER NOT NULL DEFAULT 0"),
    ("studies", "next_attempt_at", "REAL NOT NULL DEFAULT 0"),
    ("instances", "kind", "TEXT NOT NULL DEFAULT 'image'"),
    ("instances", "purged_at", "REAL NOT NULL DEFAULT 0"),  # files removed (node.retention_days)
    ("instances", "achieved_cr", "REAL"),  # the CR the transcoder measured on its output
    ("studies", "probabilities", "TEXT NOT NULL DEFAULT '{}'"),  # {laterality: P(malignant)}
)
# Before `kind`, the node's own objects were marked by this policy; they migrate to kind 'derived'
# with policy 'none' when such a store is opened.
_OLD_DERIVED_POLICY = "derived"


class StoreError(Exception):
    """The job store cannot be read or written (missing, corrupt, locked, read-only); the message
    names the file."""


class StoreFull(StoreError, OSError):
    """The disk (or quota) is full under the job store: what met it is tried again later."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL \
        or "database or disk is full" in str(exc)


class Database:
    """One SQLite connection to the store at `path`, shared by threads under a lock; `sql()`
    holds the lock and turns sqlite3's errors into StoreError / StoreFull."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        with self._translated():
            if readonly:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                           check_same_thread=False, isolation_level=None)
            else:
                self._db = sqlite3.connect(self.path, check_same_thread=False,
                                           isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)
                self._migrate()
            # A read-only store made by an earlier release lacks the added columns: read them
            # as their defaults (and the old derived policy as the derived kind).
            present = self._columns("instances")
            studies = self._columns("studies")
        old = _OLD_DERIVED_POLICY
        self._kind = "kind" if "kind" in present else \
            f"CASE WHEN policy='{old}' THEN 'derived' ELSE 'image' END"
        self._policy = "policy" if "kind" in present else \
            f"CASE WHEN policy='{old}' THEN 'none' ELSE policy END"
        self._deaths = "worker_deaths" if "worker_deaths" in present else "0"
        self._purged = "purged_at" if "purged_at" in present else "0"
        self._study_deaths = "worker_deaths" if "worker_deaths" in studies else "0"
        self._study_retry_at = "next_attempt_at" if "next_attempt_at" in studies else "0"
        self._achieved = "achieved_cr" if "achieved_cr" in present else "NULL"
        self._probabilities = "probabilities" if "probabilities" in studies else "'{}'"

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise StoreFull(f"job store {self.path}: {exc}") from exc
            raise StoreError(f"job store {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def sql(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one statement or a few, under the lock."""
        with self._lock, self._translated():
            yield self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error): several
        statements seen by other processes all at once or not at all."""
        with self.sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def _migrate(self) -> None:
        """Bring a store made by an earlier release to this schema, in place."""
        for table, column, declaration in ADDED_COLUMNS:
            if column not in self._columns(table):
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._db.execute("UPDATE instances SET kind=?, policy=? WHERE policy=?",
                         (ObjectKind.DERIVED.value, str(Policy(Compression.PASS_THROUGH)),
                          _OLD_DERIVED_POLICY))

    def close(self) -> None:
        with self._lock:
            self._db.close()
