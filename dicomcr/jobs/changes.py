"""Every change of a job's state, through the one table of allowed transitions (states.py).

`move` (and `move_all`, for every row in one state) is how a state changes, beside the two
upserts of a received image and a derived object (checked against the table too): it checks the
change against the table (raising ForbiddenTransition for one the table lacks) and applies it
only to a row still in one of the states it starts from, so that a row that moved on meanwhile
(an image sent again, a study that received another image) is left as it is and the caller
learns it (False).

Instances and studies share the life cycle of work handed to a worker (`Table`): handed out,
handed back (its task never ran), retried later (a full disk), a worker's death counted, given
up. The node's stages use those through `Table`; the named methods are the same changes under
the names the rest of the node and the tests use.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Compression, Policy
from .database import Database
from .states import (
    InstanceState,
    ObjectKind,
    State,
    StudyState,
    check,
    sources_of,
)


@dataclass(frozen=True)
class Table:
    """A table of jobs handed to workers: its key, and the states of its life cycle."""

    name: str
    key: str
    idle: State  # waiting to be handed out
    queued: State  # handed to a worker
    failed: State  # given up


INSTANCES = Table("instances", "sop_instance_uid", InstanceState.RECEIVED, InstanceState.QUEUED,
                  InstanceState.FAILED)
STUDIES = Table("studies", "study_uid", StudyState.WAITING, StudyState.QUEUED, StudyState.FAILED)


class StateChanges(Database):
    """The writes of the job store; every one is committed before it returns."""

    # -- the one primitive ---------------------------------------------------------------------
    def move(self, table: Table, uid: str, sources: State | tuple[State, ...], target: State,
             **values: object) -> bool:
        """Set the row `uid` of `table` to `target` (and `values`) if it is in one of `sources`;
        whether it was. A change the transition table does not allow raises
        ForbiddenTransition, whatever state the row is in."""
        sources = check((sources,) if isinstance(sources, InstanceState | StudyState)
                        else sources, target)
        values = {"state": target.value, **values, "updated_at": time.time()}
        columns = ", ".join(f"{column}=?" for column in values)
        marks = ", ".join("?" * len(sources))
        with self.sql() as db:
            return db.execute(
                f"UPDATE {table.name} SET {columns} WHERE {table.key}=? AND state IN ({marks})",
                (*values.values(), uid, *(s.value for s in sources))).rowcount == 1

    def move_all(self, table: Table, source: State, target: State) -> int:
        """Every row of `table` in `source` to `target`; how many."""
        check((source,), target)
        with self.sql() as db:
            return db.execute(f"UPDATE {table.name} SET state=?, updated_at=? WHERE state=?",
                              (target.value, time.time(), source.value)).rowcount

    # -- work handed to workers: instances and studies alike ----------------------------------
    def hand_out(self, table: Table, uid: str) -> bool:
        """A waiting job was handed to a worker (a pool or a broker); False when it was not
        waiting to be (sent again meanwhile, or another node took it)."""
        return self.move(table, uid, table.idle, table.queued)

    def hand_back(self, table: Table, uid: str) -> bool:
        """A job handed out goes back to wait, no death counted (its task never ran: its pool
        was replaced, or the node is stopping)."""
        return self.move(table, uid, table.queued, table.idle)

    def retry_later(self, table: Table, uid: str, retry_at: float, error: str) -> bool:
        """Put a job handed out back to wait, not before `retry_at` (its outputs met a full
        disk); False when it was not handed out (sent again meanwhile: the new one is not
        delayed)."""
        return self.move(table, uid, table.queued, table.idle, next_attempt_at=retry_at,
                         error=error)

    def count_death(self, table: Table, uid: str) -> int:
        """One death of a worker with this job in flight: the job goes back to wait; the
        number of deaths so far."""
        self.move(table, uid, table.queued, table.idle)
        with self.sql() as db:
            db.execute(f"UPDATE {table.name} SET worker_deaths=worker_deaths+1, updated_at=? "
                       f"WHERE {table.key}=?", (time.time(), uid))
            row = db.execute(f"SELECT worker_deaths FROM {table.name} WHERE {table.key}=?",
                             (uid,)).fetchone()
        return int(row[0]) if row else 0

    def give_up(self, table: Table, uid: str, reason: str, **values: object) -> bool:
        """Fail a job that waits or is handed out, with the reason; False when it moved on."""
        return self.move(table, uid, (table.idle, table.queued), table.failed, error=reason,
                         **values)

    def requeue_in_flight(self) -> tuple[int, int]:
        """What was handed to workers goes back to wait: instances queued -> received, studies
        queued -> waiting. Called when a node starts, so that what a dead node had handed out
        runs again. Returns (instances, studies) put back."""
        return (self.move_all(INSTANCES, INSTANCES.queued, INSTANCES.idle),
                self.move_all(STUDIES, STUDIES.queued, STUDIES.idle))

    # -- instances -----------------------------------------------------------------------------
    def received(self, *, sop_instance_uid: str, sop_class_uid: str, study_uid: str,
                 calling_ae: str, site: str, policy: Policy, spool_path: Path, size: int,
                 skipped: str | None = None) -> None:
        """Record an acknowledged image (one sent again starts over, whatever its state); its
        study waits again for inference, or, with `skipped` (why: its site has no model), has
        nothing to wait for."""
        if not isinstance(policy, Policy):
            raise TypeError(f"policy is a Policy (Policy.parse({policy!r})), not {policy!r}")
        study = StudyState.WAITING if skipped is None else StudyState.SKIPPED
        check(sources_of(InstanceState.RECEIVED), InstanceState.RECEIVED)
        check(sources_of(study), study)
        now = time.time()
        with self.transaction() as db:
            db.execute(
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
            db.execute(
                "INSERT INTO studies (study_uid, site, state, last_received_at, error, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE SET "
                "state=excluded.state, last_received_at=excluded.last_received_at, "
                "error=excluded.error, worker_deaths=0, next_attempt_at=0, "
                "updated_at=excluded.updated_at",
                (study_uid, site, study.value, now, skipped or "", now))

    def derived(self, *, sop_instance_uid: str, sop_class_uid: str, study_uid: str, site: str,
                path: Path) -> None:
        """Record an object the node made (an SC, the SR) as ready to forward (one made again
        replaces the first)."""
        check(sources_of(InstanceState.TRANSCODED), InstanceState.TRANSCODED)
        now = time.time()
        with self.sql() as db:
            db.execute(
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

    def queued(self, uid: str) -> bool:
        """A received instance was handed to a worker (`hand_out`)."""
        return self.hand_out(INSTANCES, uid)

    def requeue(self, uid: str) -> bool:
        """A queued instance goes back to wait (`hand_back`)."""
        return self.hand_back(INSTANCES, uid)

    def transcoded(self, uid: str, outputs: list[Path], achieved_cr: float | None = None
                   ) -> bool:
        """Its outputs are written (at `achieved_cr`, as measured, for a lossy policy). Only a
        received or queued instance: one that was sent again meanwhile and transcoded again
        keeps its newer record."""
        return self.move(INSTANCES, uid, (InstanceState.RECEIVED, InstanceState.QUEUED),
                         InstanceState.TRANSCODED,
                         outputs=json.dumps([str(p) for p in outputs]), error="",
                         next_attempt_at=0, achieved_cr=achieved_cr)

    def failed(self, uid: str, error: str, quarantined: Path | None = None) -> bool:
        """Give up on an instance that waits or is in a worker's hands (`give_up`);
        `quarantined` is where its source was moved, if it was."""
        moved = {} if quarantined is None else {"spool_path": str(quarantined)}
        return self.give_up(INSTANCES, uid, error, **moved)

    def retry_transcode(self, uid: str, retry_at: float, error: str) -> bool:
        """Transcode an instance again, not before `retry_at` (`retry_later`)."""
        return self.retry_later(INSTANCES, uid, retry_at, error)

    def worker_died(self, uid: str) -> int:
        """A transcoding worker died with this instance (`count_death`)."""
        return self.count_death(INSTANCES, uid)

    def forward_failed(self, uid: str, attempts: int, retry_at: float, error: str) -> bool:
        """The destination did not take a transcoded object: tried again at `retry_at`."""
        return self.move(INSTANCES, uid, InstanceState.TRANSCODED, InstanceState.TRANSCODED,
                         attempts=attempts, next_attempt_at=retry_at, error=error)

    def done(self, uid: str) -> bool:
        """The destination answered Success for a transcoded object; False when the row moved
        on meanwhile (its image was sent again: the new one is forwarded in its turn)."""
        return self.move(INSTANCES, uid, InstanceState.TRANSCODED, InstanceState.DONE, error="")

    def retry(self, uid: str, spool_path: Path | None = None, policy: Policy | None = None
              ) -> bool:
        """Give a failed instance or study another go: an instance goes back to be transcoded
        (from `spool_path` when its source was moved back from quarantine; at `policy` when
        given, else at the policy recorded when it was received), with its deaths and attempts
        forgotten; a study waits to be classified again. False when `uid` names nothing that
        failed."""
        values: dict[str, object] = {"error": "", "worker_deaths": 0, "attempts": 0,
                                     "next_attempt_at": 0}
        if spool_path is not None:
            values["spool_path"] = str(spool_path)
        if policy is not None:
            values["policy"] = str(policy)
        instance = self.move(INSTANCES, uid, InstanceState.FAILED, InstanceState.RECEIVED,
                             **values)
        study = self.move(STUDIES, uid, StudyState.FAILED, StudyState.WAITING, error="",
                          worker_deaths=0, next_attempt_at=0)
        return instance or study

    # -- studies -------------------------------------------------------------------------------
    def study_queued(self, study_uid: str) -> bool:
        """A waiting study was handed to an inference worker (`hand_out`)."""
        return self.hand_out(STUDIES, study_uid)

    def study_done(self, study_uid: str, state: StudyState = StudyState.INFERRED,
                   error: str = "", was: StudyState = StudyState.QUEUED,
                   probabilities: dict[str, float] | None = None) -> bool:
        """Inference of a study ended: inferred (with each breast's `probabilities`), failed
        (error says why) or skipped (no model). Only while the study is still `was` (queued: its
        result came back; waiting: given up before it was handed out): an image that arrived
        meanwhile put it back to waiting, and it is classified again with that image. False when
        it was not changed."""
        state = StudyState(state)
        if state in (StudyState.WAITING, StudyState.QUEUED):
            raise ValueError("a study is put back with study_retry and handed out with "
                             "study_queued, not study_done")
        return self.move(STUDIES, study_uid, StudyState(was), state, error=error,
                         probabilities=json.dumps(probabilities or {}))

    def study_requeue(self, study_uid: str) -> bool:
        """A queued study waits again (`hand_back`)."""
        return self.hand_back(STUDIES, study_uid)

    def study_retry(self, study_uid: str, retry_at: float, error: str) -> bool:
        """Classify a study again, not before `retry_at` (`retry_later`)."""
        return self.retry_later(STUDIES, study_uid, retry_at, error)

    def study_worker_died(self, study_uid: str) -> int:
        """The inference process died with this study (`count_death`)."""
        return self.count_death(STUDIES, study_uid)
