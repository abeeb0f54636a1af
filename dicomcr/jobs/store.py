"""The durable job store: one SQLite row per instance, in WAL mode, in the node's storage folder.

This module is the only code that reads or writes the store's SQL: the node, `dicomcr status`
and the audit all go through `JobStore`, and get dataclasses and enums back, never rows.

Instances are of two kinds (`ObjectKind`): images received from a modality or a PACS, and the
objects the node derives itself (saliency SCs and the SR), which are forwarded, never transcoded.
States: received (in the spool, acknowledged) -> queued (handed to a worker, a local pool or a
broker; awaiting its result) -> transcoded (outputs written) -> done (the destination answered
Success). A failure to transcode marks the row failed with the reason; a failure to forward
leaves it transcoded with a later retry time, and so does a full disk for a transcode (received,
retried later). A job in flight when its worker process died counts the death (worker_deaths)
and goes back to the queue; what a dead node had queued goes back when the next one starts
(`requeue_in_flight`). Rows are keyed by SOP Instance UID, so a re-sent instance replaces its row
and every step can be repeated without duplicates.

Studies have their own rows for inference: waiting (an instance arrived since the last inference)
-> queued (handed to an inference worker) -> inferred (its Secondary Captures and Structured
Report are derived instances, forwarded like any other) or failed or skipped. A new instance puts
an inferred study back to waiting; the derived objects' UIDs are functions of their sources, so a
second inference replaces the first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .config import Compression, Policy

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
    purged_at        REAL NOT NULL DEFAULT 0
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
    ("instances", "kind", "TEXT NOT NULL DEFAULT 'image'"),
    ("instances", "purged_at", "REAL NOT NULL DEFAULT 0"),  # files removed (node.retention_days)
)
# Before `kind`, the node's own objects were marked by this policy; they migrate to kind 'derived'
# with policy 'none' when such a store is opened.
_OLD_DERIVED_POLICY = "derived"


class ObjectKind(StrEnum):
    """What an instance is: a received image, or an object the node made (an SC, the SR)."""

    IMAGE = "image"
    DERIVED = "derived"


class InstanceState(StrEnum):
    """Where an instance is: acknowledged, handed to a worker, transcoded, forwarded, or given up
    (with a reason)."""

    RECEIVED = "received"
    QUEUED = "queued"
    TRANSCODED = "transcoded"
    DONE = "done"
    FAILED = "failed"


class StudyState(StrEnum):
    """Inference of a study: to do, handed to a worker, done, given up (with a reason), or not
    asked for."""

    WAITING = "waiting"
    QUEUED = "queued"
    INFERRED = "inferred"
    FAILED = "failed"
    SKIPPED = "skipped"


STATES = tuple(InstanceState)
# Instances not yet forwarded nor given up: the queue depth.
PENDING = (InstanceState.RECEIVED, InstanceState.QUEUED, InstanceState.TRANSCODED)
# {site: {kind: {state: count}}}; every state is present for a (site, kind) that has rows.
Counts = dict[str, dict[ObjectKind, dict[InstanceState, int]]]


def queue_depth(counts: Counts) -> int:
    """Instances received but not yet forwarded (nor failed), of every site and kind."""
    return sum(states[state] for kinds in counts.values() for states in kinds.values()
               for state in PENDING)


@dataclass(frozen=True)
class Job:
    """One instance to transcode or to forward."""

    sop_instance_uid: str
    site: str
    policy: Policy  # pass-through for derived objects
    kind: ObjectKind
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


@dataclass(frozen=True)
class Failure:
    """An instance or a study the node gave up on, and why (`dicomcr status --failed`)."""

    uid: str  # SOP Instance UID, or Study Instance UID for a study's inference
    site: str
    what: str  # "image", "derived" or "study"
    error: str
    where: Path | None  # the source (quarantined when a worker died with it), for instances
    when: float


@dataclass(frozen=True)
class Backlog:
    """What waits to be forwarded: how many objects, the oldest one's arrival, the retries
    they have cost (for /healthz when a destination is down)."""

    waiting: int
    oldest_received_at: float | None
    retries: int


class JobStore:
    """Thread-safe access to the job tables; every write is committed before it returns."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        if readonly:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False, isolation_level=None)
        else:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._migrate()
        # A read-only store made by an earlier release lacks the added columns: read them as
        # their defaults (and the old derived policy as the derived kind).
        present = self._columns("instances")
        self._kind = "kind" if "kind" in present else \
            f"CASE WHEN policy='{_OLD_DERIVED_POLICY}' THEN 'derived' ELSE 'image' END"
        self._policy = "policy" if "kind" in present else \
            f"CASE WHEN policy='{_OLD_DERIVED_POLICY}' THEN 'none' ELSE policy END"
        self._deaths = "worker_deaths" if "worker_deaths" in present else "0"
        self._purged = "purged_at" if "purged_at" in present else "0"
        self._study_deaths = "worker_deaths" if "worker_deaths" in self._columns("studies") \
            else "0"
        self._study_retry_at = "next_attempt_at" if "next_attempt_at" in \
            self._columns("studies") else "0"

    @classmethod
    def open_readonly(cls, path: Path) -> JobStore:
        """The store at `path` for reading only (`dicomcr status`, the audit): nothing is created
        or migrated (a store of an earlier release reads as if migrated), and a write raises
        sqlite3.OperationalError. A missing file raises FileNotFoundError."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no job store at {path}")
        return cls(path, readonly=True)

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

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

    # -- writing: instances ----------------------------------------------------------------
    def received(self, *, sop_instance_uid: str, sop_class_uid: str, study_uid: str,
                 calling_ae: str, site: str, policy: Policy, spool_path: Path, size: int) -> None:
        """Record an acknowledged image (a re-sent one starts over); its study waits again."""
        if not isinstance(policy, Policy):
            raise TypeError(f"policy is a Policy (Policy.parse({policy!r})), not {policy!r}")
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, calling_ae, "
                "site, policy, kind, spool_path, bytes, state, received_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(sop_instance_uid) DO UPDATE SET sop_class_uid=excluded.sop_class_uid, "
                "study_uid=excluded.study_uid, calling_ae=excluded.calling_ae, site=excluded.site, "
                "policy=excluded.policy, kind=excluded.kind, spool_path=excluded.spool_path, "
                "bytes=excluded.bytes, state=excluded.state, outputs='[]', attempts=0, "
                "next_attempt_at=0, error='', worker_deaths=0, purged_at=0, "
                "updated_at=excluded.updated_at",
                (sop_instance_uid, sop_class_uid, study_uid, calling_ae, site, str(policy),
                 ObjectKind.IMAGE.value, str(spool_path), size, InstanceState.RECEIVED.value,
                 now, now))
            self._db.execute(
                "INSERT INTO studies (study_uid, site, state, last_received_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE SET "
                "state=excluded.state, last_received_at=excluded.last_received_at, error='', "
                "worker_deaths=0, next_attempt_at=0, updated_at=excluded.updated_at",
                (study_uid, site, StudyState.WAITING.value, now, now))

    def derived(self, *, sop_instance_uid: str, sop_class_uid: str, study_uid: str, site: str,
                path: Path) -> None:
        """Record an object the node made (an SC, the SR) as ready to forward."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, calling_ae, "
                "site, policy, kind, spool_path, bytes, state, outputs, received_at, updated_at) "
                "VALUES (?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(sop_instance_uid) DO UPDATE SET state=excluded.state, "
                "outputs=excluded.outputs, attempts=0, next_attempt_at=0, error='', "
                "purged_at=0, updated_at=excluded.updated_at",
                (sop_instance_uid, sop_class_uid, study_uid, site,
                 str(Policy(Compression.PASS_THROUGH)), ObjectKind.DERIVED.value, str(path),
                 path.stat().st_size, InstanceState.TRANSCODED.value,
                 json.dumps([str(path)]), now, now))

    def _set(self, uid: str, where_state: InstanceState | tuple[InstanceState, ...] | None = None,
             **values: object) -> int:
        """UPDATE one instance (only while in `where_state`, or one of them, when given); the
        rows changed."""
        values["updated_at"] = time.time()
        columns = ", ".join(f"{k}=?" for k in values)
        args: tuple = (*values.values(), uid)
        condition = "sop_instance_uid=?"
        if where_state is not None:
            states = (where_state,) if isinstance(where_state, InstanceState) else where_state
            condition += f" AND state IN ({', '.join('?' * len(states))})"
            args += tuple(state.value for state in states)
        with self._lock:
            return self._db.execute(f"UPDATE instances SET {columns} WHERE {condition}",
                                    args).rowcount

    def queued(self, uid: str) -> bool:
        """A received instance was handed to a worker (a pool or a broker); False when it was not
        waiting to be (a re-send or another node took it)."""
        return self._set(uid, InstanceState.RECEIVED, state=InstanceState.QUEUED.value) == 1

    def requeue(self, uid: str) -> None:
        """A queued instance goes back to wait for a worker, no death counted (its task never
        ran: the pool it was handed to was replaced, or the node is stopping)."""
        self._set(uid, InstanceState.QUEUED, state=InstanceState.RECEIVED.value)

    def transcoded(self, uid: str, outputs: list[Path]) -> None:
        """Its outputs are written. Only a received or queued instance: one that was re-sent
        meanwhile and transcoded again keeps its newer record."""
        self._set(uid, (InstanceState.QUEUED, InstanceState.RECEIVED),
                  state=InstanceState.TRANSCODED.value,
                  outputs=json.dumps([str(p) for p in outputs]), error="", next_attempt_at=0)

    def failed(self, uid: str, error: str, quarantined: Path | None = None) -> None:
        """Give up on an instance; `quarantined` is where its source was moved, if it was."""
        if quarantined is None:
            self._set(uid, state=InstanceState.FAILED.value, error=error)
        else:
            self._set(uid, state=InstanceState.FAILED.value, error=error,
                      spool_path=str(quarantined))

    def retry_transcode(self, uid: str, retry_at: float, error: str) -> None:
        """Put an instance back to transcode, not before `retry_at` (its outputs met a full
        disk)."""
        self._set(uid, next_attempt_at=retry_at, error=error)
        self._set(uid, InstanceState.QUEUED, state=InstanceState.RECEIVED.value)

    def worker_died(self, uid: str) -> int:
        """Count one death of a transcoding worker with this job in flight, which goes back to the
        queue; the new count."""
        self._set(uid, InstanceState.QUEUED, state=InstanceState.RECEIVED.value)
        return self._count_death("instances", "sop_instance_uid", uid)

    def forward_failed(self, uid: str, attempts: int, retry_at: float, error: str) -> None:
        self._set(uid, attempts=attempts, next_attempt_at=retry_at, error=error)

    def done(self, uid: str) -> None:
        self._set(uid, state=InstanceState.DONE.value, error="")

    def _count_death(self, table: str, key: str, value: str) -> int:
        """worker_deaths + 1 on one row of `table` (a constant of this class); the new count."""
        with self._lock:
            self._db.execute(f"UPDATE {table} SET worker_deaths=worker_deaths+1, updated_at=? "
                             f"WHERE {key}=?", (time.time(), value))
            row = self._db.execute(f"SELECT worker_deaths FROM {table} WHERE {key}=?",
                                   (value,)).fetchone()
        return int(row[0]) if row else 0

    # -- writing: studies ------------------------------------------------------------------
    def study_queued(self, study_uid: str) -> bool:
        """A waiting study was handed to an inference worker; False when it was not waiting."""
        with self._lock:
            return self._db.execute(
                "UPDATE studies SET state=?, updated_at=? WHERE study_uid=? AND state=?",
                (StudyState.QUEUED.value, time.time(), study_uid, StudyState.WAITING.value)
            ).rowcount == 1

    def study_done(self, study_uid: str, state: StudyState = StudyState.INFERRED,
                   error: str = "", was: StudyState = StudyState.QUEUED) -> bool:
        """Inference of a study ended: inferred, failed (error says why) or skipped (no model).
        Only while the study is still `was` (queued: its result came back; waiting: given up
        before it was handed out): an image that arrived meanwhile put it back to waiting, and
        it is classified again with that image. False when it was not changed."""
        state = StudyState(state)
        if state in (StudyState.WAITING, StudyState.QUEUED):
            raise ValueError("a study is put back with study_retry and handed out with "
                             "study_queued, not study_done")
        with self._lock:
            return self._db.execute(
                "UPDATE studies SET state=?, error=?, updated_at=? WHERE study_uid=? AND state=?",
                (state.value, error, time.time(), study_uid, StudyState(was).value)).rowcount == 1

    def study_requeue(self, study_uid: str) -> None:
        """A queued study waits again, no death counted (its task never ran)."""
        with self._lock:
            self._db.execute("UPDATE studies SET state=?, updated_at=? WHERE study_uid=? AND "
                             "state=?", (StudyState.WAITING.value, time.time(), study_uid,
                                         StudyState.QUEUED.value))

    def study_retry(self, study_uid: str, retry_at: float, error: str) -> None:
        """Put a study back to wait, not before `retry_at` (its inference met a full disk)."""
        with self._lock:
            self._db.execute(
                "UPDATE studies SET next_attempt_at=?, error=?, updated_at=?, "
                "state=CASE WHEN state=? THEN ? ELSE state END WHERE study_uid=?",
                (retry_at, error, time.time(), StudyState.QUEUED.value, StudyState.WAITING.value,
                 study_uid))

    def study_worker_died(self, study_uid: str) -> int:
        """Count one death of the inference process with this study in flight, which waits
        again; the new count."""
        with self._lock:
            self._db.execute("UPDATE studies SET state=? WHERE study_uid=? AND state=?",
                             (StudyState.WAITING.value, study_uid, StudyState.QUEUED.value))
        return self._count_death("studies", "study_uid", study_uid)

    def requeue_in_flight(self) -> tuple[int, int]:
        """What was handed to workers goes back to the queue: instances queued -> received,
        studies queued -> waiting. Called when a node starts, so that what a dead node had
        handed out runs again. Returns (instances, studies) put back."""
        now = time.time()
        with self._lock:
            instances = self._db.execute(
                "UPDATE instances SET state=?, updated_at=? WHERE state=?",
                (InstanceState.RECEIVED.value, now, InstanceState.QUEUED.value)).rowcount
            studies = self._db.execute(
                "UPDATE studies SET state=?, updated_at=? WHERE state=?",
                (StudyState.WAITING.value, now, StudyState.QUEUED.value)).rowcount
        return instances, studies

    # -- reading ---------------------------------------------------------------------------
    def _jobs(self, where: str, args: tuple, order: str = "received_at",
              limit: int | None = None) -> list[Job]:
        query = (f"SELECT sop_instance_uid, site, {self._policy}, {self._kind}, spool_path, "
                 f"outputs, attempts, {self._deaths} FROM instances WHERE {where} ORDER BY {order}")
        if limit is not None:
            query += " LIMIT ?"
            args += (limit,)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [Job(uid, site, Policy.parse(policy), ObjectKind(kind), Path(spool),
                    tuple(Path(p) for p in json.loads(outputs)), attempts, deaths)
                for uid, site, policy, kind, spool, outputs, attempts, deaths in rows]

    def to_transcode(self, limit: int, now: float | None = None) -> list[Job]:
        """Acknowledged instances to transcode, oldest first (a retry after a full disk waits)."""
        return self._jobs("state=? AND next_attempt_at <= ?",
                          (InstanceState.RECEIVED.value, time.time() if now is None else now),
                          limit=limit)

    def to_forward(self, limit: int, now: float | None = None) -> list[Job]:
        """Transcoded instances (images and derived objects) whose forwarding is due."""
        return self._jobs("state=? AND next_attempt_at <= ?",
                          (InstanceState.TRANSCODED.value, time.time() if now is None else now),
                          order="next_attempt_at, received_at", limit=limit)

    def _study_files(self, study_uid: str) -> tuple[bool, tuple[Path, ...]]:
        """(whether an image of the study is still to transcode, its images' outputs). Call
        with the lock held."""
        rows = self._db.execute(f"SELECT state, outputs FROM instances WHERE study_uid=? AND "
                                f"{self._kind}=?", (study_uid, ObjectKind.IMAGE.value)).fetchall()
        pending = any(state in (InstanceState.RECEIVED, InstanceState.QUEUED)
                      for state, _ in rows)
        files = tuple(Path(p) for state, outputs in rows if state != InstanceState.FAILED
                      for p in json.loads(outputs))
        return pending, files

    def studies_to_infer(self, stable_seconds: float, views: int = 4,
                         now: float | None = None) -> list[StudyJob]:
        """Each waiting study that is ready: none of its images still to transcode (received or
        queued), `views` images in or `stable_seconds` of quiet, and no retry pending (after a
        full disk)."""
        now = time.time() if now is None else now
        ready = []
        with self._lock:
            waiting = self._db.execute(
                f"SELECT study_uid, site, last_received_at, {self._study_deaths} FROM studies "
                f"WHERE state=? AND {self._study_retry_at} <= ?",
                (StudyState.WAITING.value, now)).fetchall()
            for study, site, last, deaths in waiting:
                pending, files = self._study_files(study)
                if not pending and files and (len(files) >= views or now - last >= stable_seconds):
                    ready.append(StudyJob(study, site, files, deaths))
        return ready

    def study_states(self) -> dict[StudyState, int]:
        """{state: number of studies}, for the states that have any."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        return {StudyState(state): n for state, n in rows}

    def counts(self) -> Counts:
        """{site: {kind: {state: count}}}: every state for each (site, kind) that has rows."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT site, {self._kind}, state, COUNT(*) FROM instances "
                f"GROUP BY site, {self._kind}, state").fetchall()
        out: Counts = {}
        for site, kind, state, n in rows:
            by_kind = out.setdefault(site, {})
            by_kind.setdefault(ObjectKind(kind), dict.fromkeys(InstanceState, 0))[
                InstanceState(state)] = n
        return out

    def forward_backlog(self) -> Backlog:
        """The transcoded objects not yet delivered."""
        with self._lock:
            n, oldest, retries = self._db.execute(
                "SELECT COUNT(*), MIN(received_at), COALESCE(SUM(attempts), 0) FROM instances "
                "WHERE state=?", (InstanceState.TRANSCODED.value,)).fetchone()
        return Backlog(int(n), oldest, int(retries))

    def delivered_before(self, when: float, limit: int = 256) -> list[Job]:
        """Objects delivered (done) before `when` whose files are still kept, oldest first:
        what node.retention_days lets the node delete. Never anything not yet delivered."""
        return self._jobs(f"state=? AND updated_at < ? AND {self._purged}=0",
                          (InstanceState.DONE.value, when), order="updated_at", limit=limit)

    def purged(self, uid: str) -> None:
        """The files of a delivered object were deleted; its row stays as the record."""
        self._set(uid, InstanceState.DONE, purged_at=time.time())

    def retry(self, uid: str, spool_path: Path | None = None) -> bool:
        """Give a failed instance or study another go: an instance goes back to be transcoded
        (from `spool_path` when its source was moved back from quarantine), with its deaths and
        attempts forgotten; a study waits to be classified again. False when `uid` names
        nothing that failed."""
        now = time.time()
        with self._lock:
            values = "state=?, error='', worker_deaths=0, attempts=0, next_attempt_at=0, " \
                     "updated_at=?" + (", spool_path=?" if spool_path is not None else "")
            args: tuple = (InstanceState.RECEIVED.value, now) + \
                ((str(spool_path),) if spool_path is not None else ())
            changed = self._db.execute(
                f"UPDATE instances SET {values} WHERE sop_instance_uid=? AND state=?",
                (*args, uid, InstanceState.FAILED.value)).rowcount
            changed += self._db.execute(
                "UPDATE studies SET state=?, error='', worker_deaths=0, next_attempt_at=0, "
                "updated_at=? WHERE study_uid=? AND state=?",
                (StudyState.WAITING.value, now, uid, StudyState.FAILED.value)).rowcount
        return changed > 0

    def failures(self) -> list[Failure]:
        """Every failed instance and study with its reason, newest first."""
        with self._lock:
            instances = self._db.execute(
                f"SELECT sop_instance_uid, site, {self._kind}, error, spool_path, updated_at "
                "FROM instances WHERE state=?", (InstanceState.FAILED.value,)).fetchall()
            studies = self._db.execute(
                "SELECT study_uid, site, error, updated_at FROM studies WHERE state=?",
                (StudyState.FAILED.value,)).fetchall()
        found = [Failure(uid, site, kind, error, Path(path), when)
                 for uid, site, kind, error, path, when in instances]
        found += [Failure(uid, site, "study", error, None, when)
                  for uid, site, error, when in studies]
        return sorted(found, key=lambda f: f.when, reverse=True)

    def outputs_by_site(self, kind: ObjectKind = ObjectKind.IMAGE,
                        states: Iterable[InstanceState] = (InstanceState.TRANSCODED,
                                                           InstanceState.DONE)
                        ) -> dict[str, list[Path]]:
        """{site: output files} of the instances of `kind` in `states` (by default: the images
        each site's policy produced)."""
        states = [InstanceState(s).value for s in states]
        if not states:
            return {}
        marks = ", ".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT site, outputs FROM instances WHERE {self._kind}=? AND state IN "
                f"({marks}) AND {self._purged}=0 ORDER BY site, received_at",
                (ObjectKind(kind).value, *states)
            ).fetchall()
        out: dict[str, list[Path]] = {}
        for site, outputs in rows:
            out.setdefault(site, []).extend(Path(p) for p in json.loads(outputs))
        return out
