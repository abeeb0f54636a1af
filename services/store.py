"""The durable job store: one SQLite row per received instance, in WAL mode, in the storage folder.

States: received (in the spool, acknowledged) -> transcoded (outputs written) -> done (the
destination answered Success). A failure to transcode marks the row failed with the reason; a
failure to forward leaves it transcoded with a later retry time, and so does a full disk for a
transcode (received, retried later). A job in flight when its worker process died counts the death
(worker_deaths) and goes back to the queue. Rows are keyed by SOP Instance UID, so a re-sent
instance replaces its row and every step can be repeated without duplicates.

Studies have their own rows for inference: waiting (an instance arrived since the last inference)
-> inferred (its Secondary Captures and Structured Report are jobs of their own, policy "derived",
forwarded like any instance) or failed. A new instance puts an inferred study back to waiting; the
derived objects' UIDs are functions of their sources, so a second inference replaces the first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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
    worker_deaths    INTEGER NOT NULL DEFAULT 0
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
    next_attempt_at  REAL NOT NULL DEFAULT 0
);
"""
# Columns added after the first release: (table, column, declaration) for stores made before.
ADDED_COLUMNS = (
    ("instances", "worker_deaths", "INTEGER NOT NULL DEFAULT 0"),
    ("studies", "worker_deaths", "INTEGER NOT NULL DEFAULT 0"),
    ("studies", "next_attempt_at", "REAL NOT NULL DEFAULT 0"),
)
DERIVED = "derived"  # the policy of the node's own objects (SC, SR): forwarded, never transcoded


class InstanceState(StrEnum):
    """Where an instance is: acknowledged, transcoded, forwarded, or given up (with a reason)."""

    RECEIVED = "received"
    TRANSCODED = "transcoded"
    DONE = "done"
    FAILED = "failed"


class StudyState(StrEnum):
    """Inference of a study: to do, done, given up (with a reason), or not asked for."""

    WAITING = "waiting"
    INFERRED = "inferred"
    FAILED = "failed"
    SKIPPED = "skipped"


STATES = tuple(state.value for state in InstanceState)


@dataclass(frozen=True)
class Job:
    sop_instance_uid: str
    site: str
    policy: str  # "20", "lossless", "none", or "derived" for the node's own SC and SR
    spool_path: Path
    outputs: tuple[Path, ...]
    attempts: int  # forwarding attempts that failed
    worker_deaths: int = 0  # times a transcoding worker died with this job in flight


@dataclass(frozen=True)
class StudyJob:
    """A study ready for inference: its images at the site's CR."""

    study_uid: str
    site: str
    files: tuple[Path, ...]
    worker_deaths: int = 0  # times the inference process died with this study in flight


class JobStore:
    """Thread-safe access to the job table; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for table, column, declaration in ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def received(self, *, sop_instance_uid: str, sop_class_uid: str, study_uid: str,
                 calling_ae: str, site: str, policy: str, spool_path: Path, size: int) -> None:
        """Record an acknowledged instance (a re-sent one starts over)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, calling_ae, "
                "site, policy, spool_path, bytes, state, received_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'received', ?, ?) "
                "ON CONFLICT(sop_instance_uid) DO UPDATE SET sop_class_uid=excluded.sop_class_uid, "
                "study_uid=excluded.study_uid, calling_ae=excluded.calling_ae, site=excluded.site, "
                "policy=excluded.policy, spool_path=excluded.spool_path, bytes=excluded.bytes, "
                "state='received', outputs='[]', attempts=0, next_attempt_at=0, error='', "
                "worker_deaths=0, updated_at=excluded.updated_at",
                (sop_instance_uid, sop_class_uid, study_uid, calling_ae, site, policy,
                 str(spool_path), size, now, now))
            self._db.execute(
                "INSERT INTO studies (study_uid, site, state, last_received_at, updated_at) "
                "VALUES (?, ?, 'waiting', ?, ?) ON CONFLICT(study_uid) DO UPDATE SET "
                "state='waiting', last_received_at=excluded.last_received_at, error='', "
                "worker_deaths=0, next_attempt_at=0, updated_at=excluded.updated_at",
                (study_uid, site, now, now))

    def derived(self, *, sop_instance_uid: str, sop_class_uid: str, study_uid: str, site: str,
                path: Path) -> None:
        """Record an object the node made (an SC, the SR) as ready to forward."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, calling_ae, "
                "site, policy, spool_path, bytes, state, outputs, received_at, updated_at) "
                "VALUES (?, ?, ?, '', ?, ?, ?, ?, 'transcoded', ?, ?, ?) "
                "ON CONFLICT(sop_instance_uid) DO UPDATE SET state='transcoded', "
                "outputs=excluded.outputs, attempts=0, next_attempt_at=0, error='', "
                "updated_at=excluded.updated_at",
                (sop_instance_uid, sop_class_uid, study_uid, site, DERIVED, str(path),
                 path.stat().st_size, json.dumps([str(path)]), now, now))

    def studies_to_infer(self, stable_seconds: float, views: int = 4,
                         now: float | None = None) -> list[StudyJob]:
        """Each waiting study that is ready: none of its instances still to transcode, `views`
        images in or `stable_seconds` of quiet, and no retry pending (after a full disk)."""
        now = time.time() if now is None else now
        with self._lock:
            waiting = self._db.execute(
                "SELECT study_uid, site, last_received_at, worker_deaths FROM studies "
                "WHERE state='waiting' AND next_attempt_at <= ?", (now,)).fetchall()
            ready = []
            for study, site, last, deaths in waiting:
                rows = self._db.execute(
                    "SELECT state, outputs FROM instances WHERE study_uid=? AND policy != ?",
                    (study, DERIVED)).fetchall()
                if any(state == InstanceState.RECEIVED for state, _ in rows):
                    continue
                files = [Path(p) for state, outputs in rows if state != InstanceState.FAILED
                         for p in json.loads(outputs)]
                if files and (len(files) >= views or now - last >= stable_seconds):
                    ready.append(StudyJob(study, site, tuple(files), deaths))
        return ready

    def study_done(self, study_uid: str, state: StudyState = StudyState.INFERRED,
                   error: str = "") -> None:
        """Inference of a study ended: inferred, failed (error says why) or skipped (no model)."""
        state = StudyState(state)
        if state is StudyState.WAITING:
            raise ValueError("a study is put back with study_retry, not study_done")
        with self._lock:
            self._db.execute("UPDATE studies SET state=?, error=?, updated_at=? WHERE study_uid=?",
                             (state.value, error, time.time(), study_uid))

    def study_retry(self, study_uid: str, retry_at: float, error: str) -> None:
        """Leave a study waiting but not before `retry_at` (its inference met a full disk)."""
        with self._lock:
            self._db.execute("UPDATE studies SET next_attempt_at=?, error=?, updated_at=? "
                             "WHERE study_uid=?", (retry_at, error, time.time(), study_uid))

    def study_worker_died(self, study_uid: str) -> int:
        """Count one death of the inference process with this study in flight; the new count."""
        return self._count_death("studies", "study_uid", study_uid)

    def _count_death(self, table: str, key: str, value: str) -> int:
        """worker_deaths + 1 on one row of `table` (a constant of this class); the new count."""
        with self._lock:
            self._db.execute(f"UPDATE {table} SET worker_deaths=worker_deaths+1, updated_at=? "
                             f"WHERE {key}=?", (time.time(), value))
            row = self._db.execute(f"SELECT worker_deaths FROM {table} WHERE {key}=?",
                                   (value,)).fetchone()
        return int(row[0]) if row else 0

    def study_states(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        return dict(rows)

    def _jobs(self, query: str, args: tuple) -> list[Job]:
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [Job(r[0], r[1], r[2], Path(r[3]), tuple(Path(p) for p in json.loads(r[4])), r[5],
                    r[6]) for r in rows]

    _COLUMNS = "sop_instance_uid, site, policy, spool_path, outputs, attempts, worker_deaths"

    def to_transcode(self, limit: int, now: float | None = None) -> list[Job]:
        """Acknowledged instances to transcode, oldest first (a retry after a full disk waits)."""
        return self._jobs(f"SELECT {self._COLUMNS} FROM instances WHERE state='received' "
                          "AND next_attempt_at <= ? ORDER BY received_at LIMIT ?",
                          (time.time() if now is None else now, limit))

    def to_forward(self, limit: int, now: float | None = None) -> list[Job]:
        return self._jobs(f"SELECT {self._COLUMNS} FROM instances WHERE state='transcoded' "
                          "AND next_attempt_at <= ? ORDER BY next_attempt_at, received_at LIMIT ?",
                          (time.time() if now is None else now, limit))

    def _set(self, uid: str, **values: object) -> None:
        values["updated_at"] = time.time()
        columns = ", ".join(f"{k}=?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE instances SET {columns} WHERE sop_instance_uid=?",
                             (*values.values(), uid))

    def transcoded(self, uid: str, outputs: list[Path]) -> None:
        self._set(uid, state=InstanceState.TRANSCODED.value,
                  outputs=json.dumps([str(p) for p in outputs]), error="", next_attempt_at=0)

    def failed(self, uid: str, error: str, quarantined: Path | None = None) -> None:
        """Give up on an instance; `quarantined` is where its source was moved, if it was."""
        if quarantined is None:
            self._set(uid, state=InstanceState.FAILED.value, error=error)
        else:
            self._set(uid, state=InstanceState.FAILED.value, error=error,
                      spool_path=str(quarantined))

    def retry_transcode(self, uid: str, retry_at: float, error: str) -> None:
        """Leave an instance to transcode, not before `retry_at` (its outputs met a full disk)."""
        self._set(uid, next_attempt_at=retry_at, error=error)

    def worker_died(self, uid: str) -> int:
        """Count one death of a transcoding worker with this job in flight; the new count."""
        return self._count_death("instances", "sop_instance_uid", uid)

    def forward_failed(self, uid: str, attempts: int, retry_at: float, error: str) -> None:
        self._set(uid, attempts=attempts, next_attempt_at=retry_at, error=error)

    def done(self, uid: str) -> None:
        self._set(uid, state=InstanceState.DONE.value, error="")

    def counts(self) -> dict[str, dict[str, int]]:
        """{site: {state: count}}."""
        with self._lock:
            rows = self._db.execute(
                "SELECT site, state, COUNT(*) FROM instances GROUP BY site, state").fetchall()
        out: dict[str, dict[str, int]] = {}
        for site, state, n in rows:
            out.setdefault(site, dict.fromkeys(STATES, 0))[state] = n
        return out
