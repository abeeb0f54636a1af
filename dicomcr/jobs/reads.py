"""What the job store answers: the work that is due for each stage, and the read models of the
node's state (counts, failures, the forwarding backlog, each site's outputs) for /healthz,
/metrics, `dicomcr status` and the audit."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

from ..config import Policy
from .database import Database
from .records import (
    AchievedCR,
    Backlog,
    Counts,
    FailedWhat,
    Failure,
    ImageView,
    Job,
    StudyJob,
    StudyView,
)
from .states import InstanceState, ObjectKind, StudyState


class ReadModels(Database):
    """The queries of the job store; none of them changes anything."""

    # -- work that is due ------------------------------------------------------------------------
    def _jobs(self, where: str, args: tuple, order: str = "received_at",
              limit: int | None = None) -> list[Job]:
        query = (f"SELECT sop_instance_uid, site, {self._policy}, {self._kind}, spool_path, "
                 f"outputs, attempts, {self._deaths} FROM instances WHERE {where} ORDER BY {order}")
        if limit is not None:
            query += " LIMIT ?"
            args += (limit,)
        with self.sql() as db:
            rows = db.execute(query, args).fetchall()
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

    def next_due(self, state: InstanceState) -> float | None:
        """When the earliest instance in `state` that waits for a retry time falls due (None
        when none waits): how long a stage with nothing to do may sleep."""
        with self.sql() as db:
            (when,) = db.execute("SELECT MIN(next_attempt_at) FROM instances WHERE state=? AND "
                                 "next_attempt_at > 0", (state.value,)).fetchone()
        return when

    def _study_files(self, db, study_uid: str) -> tuple[bool, tuple[Path, ...]]:
        """(whether an image of the study is still to transcode, its images' outputs)."""
        rows = db.execute(f"SELECT state, outputs FROM instances WHERE study_uid=? AND "
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
        with self.sql() as db:
            waiting = db.execute(
                f"SELECT study_uid, site, last_received_at, {self._study_deaths} FROM studies "
                f"WHERE state=? AND {self._study_retry_at} <= ?",
                (StudyState.WAITING.value, now)).fetchall()
            for study, site, last, deaths in waiting:
                pending, files = self._study_files(db, study)
                if not pending and files and (len(files) >= views or now - last >= stable_seconds):
                    ready.append(StudyJob(study, site, files, deaths))
        return ready

    def next_study_due(self, stable_seconds: float) -> float | None:
        """When the earliest waiting study falls due by its quiet time or its retry time (None
        when none waits)."""
        with self.sql() as db:
            (when,) = db.execute(
                f"SELECT MIN(MAX(last_received_at + ?, {self._study_retry_at})) FROM studies "
                "WHERE state=?", (stable_seconds, StudyState.WAITING.value)).fetchone()
        return when

    # -- the node's state ------------------------------------------------------------------------
    def study_states(self) -> dict[StudyState, int]:
        """{state: number of studies}, for the states that have any."""
        with self.sql() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        return {StudyState(state): n for state, n in rows}

    def counts(self) -> Counts:
        """{site: {kind: {state: count}}}: every state for each (site, kind) that has rows."""
        with self.sql() as db:
            rows = db.execute(
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
        with self.sql() as db:
            n, oldest, retries = db.execute(
                "SELECT COUNT(*), MIN(received_at), COALESCE(SUM(attempts), 0) FROM instances "
                "WHERE state=?", (InstanceState.TRANSCODED.value,)).fetchone()
        return Backlog(int(n), oldest, int(retries))

    def failures(self) -> list[Failure]:
        """Every failed instance and study with its reason, newest first."""
        with self.sql() as db:
            instances = db.execute(
                f"SELECT sop_instance_uid, site, {self._kind}, error, spool_path, updated_at, "
                f"{self._policy} FROM instances WHERE state=?",
                (InstanceState.FAILED.value,)).fetchall()
            studies = db.execute(
                "SELECT study_uid, site, error, updated_at FROM studies WHERE state=?",
                (StudyState.FAILED.value,)).fetchall()
        found = [Failure(uid, site, FailedWhat(kind), error, Path(path), when,
                         Policy.parse(policy))
                 for uid, site, kind, error, path, when, policy in instances]
        found += [Failure(uid, site, FailedWhat.STUDY, error, None, when)
                  for uid, site, error, when in studies]
        return sorted(found, key=lambda f: f.when, reverse=True)

    def outputs_by_site(self, kind: ObjectKind = ObjectKind.IMAGE,
                        states: Iterable[InstanceState] = (InstanceState.TRANSCODED,
                                                           InstanceState.DONE)
                        ) -> dict[str, list[Path]]:
        """{site: output files} of the instances of `kind` in `states` (by default: the images
        each site's policy produced), leaving out those whose files were purged."""
        states = [InstanceState(s).value for s in states]
        if not states:
            return {}
        marks = ", ".join("?" * len(states))
        with self.sql() as db:
            rows = db.execute(
                f"SELECT site, outputs FROM instances WHERE {self._kind}=? AND state IN "
                f"({marks}) AND {self._purged}=0 ORDER BY site, received_at",
                (ObjectKind(kind).value, *states)).fetchall()
        out: dict[str, list[Path]] = {}
        for site, outputs in rows:
            out.setdefault(site, []).extend(Path(p) for p in json.loads(outputs))
        return out

    def recent_studies(self, limit: int = 20) -> list[StudyView]:
        """The `limit` studies that received an image last, newest first, each with its images
        and derived objects (the operator page)."""
        with self.sql() as db:
            studies = db.execute(
                f"SELECT study_uid, site, state, error, {self._probabilities}, last_received_at "
                "FROM studies ORDER BY last_received_at DESC LIMIT ?", (limit,)).fetchall()
            views = []
            for uid, site, state, error, probabilities, last in studies:
                rows = db.execute(
                    f"SELECT sop_instance_uid, {self._kind}, state, {self._achieved}, outputs, "
                    "error, attempts, next_attempt_at FROM instances WHERE study_uid=? "
                    f"ORDER BY {self._kind} DESC, received_at", (uid,)).fetchall()
                instances = tuple(
                    ImageView(sop, ObjectKind(kind), InstanceState(istate), cr,
                              tuple(Path(p) for p in json.loads(outputs)), ierror, attempts, due)
                    for sop, kind, istate, cr, outputs, ierror, attempts, due in rows)
                views.append(StudyView(uid, site, StudyState(state), error,
                                       json.loads(probabilities), last, instances))
        return views

    def achieved_crs(self) -> dict[str, AchievedCR]:
        """{site: the spread of the CRs measured on its transcoded images} (lossy ones)."""
        with self.sql() as db:
            rows = db.execute(f"SELECT site, {self._achieved} FROM instances WHERE {self._kind}=? "
                              f"AND {self._achieved} IS NOT NULL",
                              (ObjectKind.IMAGE.value,)).fetchall()
        by_site: dict[str, list[float]] = {}
        for site, cr in rows:
            by_site.setdefault(site, []).append(cr)
        return {site: AchievedCR(len(crs), min(crs), statistics.median(crs), max(crs))
                for site, crs in by_site.items()}

    def retrying(self, limit: int = 50) -> list[tuple[Job, str, float]]:
        """Objects whose forwarding failed and waits for its next try: (job, the last error,
        when it is tried again), the soonest first."""
        with self.sql() as db:
            rows = db.execute("SELECT sop_instance_uid, error, next_attempt_at FROM instances "
                              "WHERE state=? AND attempts > 0 ORDER BY next_attempt_at LIMIT ?",
                              (InstanceState.TRANSCODED.value, limit)).fetchall()
        jobs = {job.uid: job for job in self._jobs(
            f"sop_instance_uid IN ({', '.join('?' * len(rows))})", tuple(r[0] for r in rows))}
        return [(jobs[uid], error, due) for uid, error, due in rows if uid in jobs]
