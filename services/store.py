"""The durable job store: one SQLite row per received instance, in WAL mode, in the storage folder.

States: received (in the spool, acknowledged) -> transcoded (outputs written) -> done (the
destination answered Success). A failure to transcode marks the row failed with the reason; a
failure to forward leaves it transcoded with a later retry time. Rows are keyed by SOP Instance UID,
so a re-sent instance replaces its row and every step can be repeated without duplicates.

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
    updated_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS by_state ON instances (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS by_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid        TEXT PRIMARY KEY,
    site             TEXT NOT NULL,
    state            TEXT NOT NULL,
    last_received_at REAL NOT NULL,
    error            TEXT NOT NULL DEFAULT '',
    updated_at       REAL NOT NULL
);
"""
DERIVED = "derived"  # the policy of the node's own objects (SC, SR): forwarded, never transcoded
STATES = ("received", "transcoded", "done", "failed")


@dataclass(frozen=True)
class Job:
    sop_instance_uid: str
    site: str
    policy: str  # "20", "lossless", "none", or "derived" for the node's own SC and SR
    spool_path: Path
    outputs: tuple[Path, ...]
    attempts: int


class JobStore:
    """Thread-safe access to the job table; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

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
                "updated_at=excluded.updated_at",
                (sop_instance_uid, sop_class_uid, study_uid, calling_ae, site, policy,
                 str(spool_path), size, now, now))
            self._db.execute(
                "INSERT INTO studies (study_uid, site, state, last_received_at, updated_at) "
                "VALUES (?, ?, 'waiting', ?, ?) ON CONFLICT(study_uid) DO UPDATE SET "
                "state='waiting', last_received_at=excluded.last_received_at, error='', "
                "updated_at=excluded.updated_at", (study_uid, site, now, now))

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
                         now: float | None = None) -> list[tuple[str, str, list[Path]]]:
        """(study, site, image files at the site's CR) of each waiting study that is ready: none of
        its instances still to transcode, and `views` images in or `stable_seconds` of quiet."""
        now = time.time() if now is None else now
        with self._lock:
            waiting = self._db.execute(
                "SELECT study_uid, site, last_received_at FROM studies WHERE state='waiting'"
            ).fetchall()
            ready = []
            for study, site, last in waiting:
                rows = self._db.execute(
                    "SELECT state, outputs FROM instances WHERE study_uid=? AND policy != ?",
                    (study, DERIVED)).fetchall()
                if any(state == "received" for state, _ in rows):
                    continue
                files = [Path(p) for state, outputs in rows if state != "failed"
                         for p in json.loads(outputs)]
                if files and (len(files) >= views or now - last >= stable_seconds):
                    ready.append((study, site, files))
        return ready

    def study_done(self, study_uid: str, state: str = "inferred", error: str = "") -> None:
        """Inference of a study ended: inferred, failed (error says why) or skipped (no model)."""
        if state not in ("inferred", "failed", "skipped"):
            raise ValueError(f"unknown study state {state!r}")
        with self._lock:
            self._db.execute("UPDATE studies SET state=?, error=?, updated_at=? WHERE study_uid=?",
                             (state, error, time.time(), study_uid))

    def study_states(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        return dict(rows)

    def _jobs(self, query: str, args: tuple) -> list[Job]:
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [Job(r[0], r[1], r[2], Path(r[3]), tuple(Path(p) for p in json.loads(r[4])), r[5])
                for r in rows]

    def to_transcode(self, limit: int) -> list[Job]:
        return self._jobs("SELECT sop_instance_uid, site, policy, spool_path, outputs, attempts "
                          "FROM instances WHERE state='received' ORDER BY received_at LIMIT ?",
                          (limit,))

    def to_forward(self, limit: int, now: float | None = None) -> list[Job]:
        return self._jobs("SELECT sop_instance_uid, site, policy, spool_path, outputs, attempts "
                          "FROM instances WHERE state='transcoded' AND next_attempt_at <= ? "
                          "ORDER BY next_attempt_at, received_at LIMIT ?",
                          (time.time() if now is None else now, limit))

    def _set(self, uid: str, **values: object) -> None:
        values["updated_at"] = time.time()
        columns = ", ".join(f"{k}=?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE instances SET {columns} WHERE sop_instance_uid=?",
                             (*values.values(), uid))

    def transcoded(self, uid: str, outputs: list[Path]) -> None:
        self._set(uid, state="transcoded", outputs=json.dumps([str(p) for p in outputs]),
                  error="", next_attempt_at=0)

    def failed(self, uid: str, error: str) -> None:
        self._set(uid, state="failed", error=error)

    def forward_failed(self, uid: str, attempts: int, retry_at: float, error: str) -> None:
        self._set(uid, attempts=attempts, next_attempt_at=retry_at, error=error)

    def done(self, uid: str) -> None:
        self._set(uid, state="done", error="")

    def counts(self) -> dict[str, dict[str, int]]:
        """{site: {state: count}}."""
        with self._lock:
            rows = self._db.execute(
                "SELECT site, state, COUNT(*) FROM instances GROUP BY site, state").fetchall()
        out: dict[str, dict[str, int]] = {}
        for site, state, n in rows:
            out.setdefault(site, dict.fromkeys(STATES, 0))[state] = n
        return out
