"""The work-queue seam: what the node hands to workers, what comes back, and the interface both
backends implement.

Tasks carry paths, never pixel data: a worker on another machine reads the spool and writes its
outputs on the storage it shares with the node. Tasks and results are small frozen values that
cross a process or a broker as plain dicts (`to_dict` / `from_dict`), so nothing is parsed back
from strings. Running a task twice writes the same files under the same names and UIDs, so a
backend may deliver at least once.

`run_transcode` and `run_inference` are the units of work; the local backend runs them in its
process pools, a Celery worker runs the very same functions.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from dicomcr.config import Policy


class TaskKind(StrEnum):
    """The two kinds of work, each with its own queue (GPU machines take only inference)."""

    TRANSCODE = "transcode"
    INFER = "infer"


class Outcome(StrEnum):
    """How a task ended, as the node must act on it."""

    DONE = "done"  # outputs written
    FAILED = "failed"  # this input cannot be done (the error says why): no retry
    DISK_FULL = "disk_full"  # outputs met a full disk: try again later
    WORKER_DIED = "worker_died"  # the process running it died (local backend): count, retry
    DEAD_LETTERED = "dead_lettered"  # the broker gave up after its delivery limit: no retry
    NOT_RUN = "not_run"  # dropped before it started (its pool was replaced): queue it again


class QueueUnavailable(RuntimeError):
    """The queue cannot take a task now (the broker is down): the job stays in the outbox."""


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class TranscodeTask:
    """Transcode one received instance at its site's policy into `out`."""

    sop_instance_uid: str
    source: Path
    out: Path
    policy: Policy

    kind = TaskKind.TRANSCODE

    def to_dict(self) -> dict:
        return {"sop_instance_uid": self.sop_instance_uid, "source": str(self.source),
                "out": str(self.out), "policy": str(self.policy)}

    @classmethod
    def from_dict(cls, data: dict) -> TranscodeTask:
        return cls(data["sop_instance_uid"], Path(data["source"]), Path(data["out"]),
                   Policy.parse(data["policy"]))


@dataclass(frozen=True)
class TranscodeResult:
    """What became of a TranscodeTask: its output files, the CR achieved, time and memory."""

    sop_instance_uid: str
    outcome: Outcome
    outputs: tuple[Path, ...] = ()
    achieved_cr: float | None = None
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    error: str = ""

    @property
    def uid(self) -> str:
        """The key of the job this is the result of."""
        return self.sop_instance_uid

    def to_dict(self) -> dict:
        data = asdict(self)
        data["outputs"] = [str(p) for p in self.outputs]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TranscodeResult:
        return cls(data["sop_instance_uid"], Outcome(data["outcome"]),
                   tuple(Path(p) for p in data["outputs"]), data["achieved_cr"],
                   data["seconds"], data["peak_rss_mb"], data["error"])


@dataclass(frozen=True)
class StudyTask:
    """One study to classify: its images at the site's CR, and where its objects go."""

    study_uid: str
    files: tuple[Path, ...]
    out: Path
    policy: Policy

    def to_dict(self) -> dict:
        return {"study_uid": self.study_uid, "files": [str(p) for p in self.files],
                "out": str(self.out), "policy": str(self.policy)}

    @classmethod
    def from_dict(cls, data: dict) -> StudyTask:
        return cls(data["study_uid"], tuple(Path(p) for p in data["files"]), Path(data["out"]),
                   Policy.parse(data["policy"]))


@dataclass(frozen=True)
class InferenceTask:
    """A batch of studies for one model: the worker loads the model once and classifies each."""

    model: Path
    device: str
    studies: tuple[StudyTask, ...]

    kind = TaskKind.INFER

    def to_dict(self) -> dict:
        return {"model": str(self.model), "device": self.device,
                "studies": [s.to_dict() for s in self.studies]}

    @classmethod
    def from_dict(cls, data: dict) -> InferenceTask:
        return cls(Path(data["model"]), data["device"],
                   tuple(StudyTask.from_dict(s) for s in data["studies"]))


@dataclass(frozen=True)
class DerivedObject:
    """One DICOM object the node made for a study (an SC or the SR), ready to forward."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path


@dataclass(frozen=True)
class InferenceResult:
    """What became of one study of an InferenceTask."""

    study_uid: str
    outcome: Outcome
    objects: tuple[DerivedObject, ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    @property
    def uid(self) -> str:
        """The key of the job this is the result of."""
        return self.study_uid

    def to_dict(self) -> dict:
        data = asdict(self)
        data["objects"] = [{**asdict(o), "path": str(o.path)} for o in self.objects]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> InferenceResult:
        objects = tuple(DerivedObject(o["sop_instance_uid"], o["sop_class_uid"], Path(o["path"]))
                        for o in data["objects"])
        return cls(data["study_uid"], Outcome(data["outcome"]), objects,
                   dict(data["probabilities"]), data["seconds"], data["error"])


Task = TranscodeTask | InferenceTask
Result = TranscodeResult | InferenceResult


@dataclass(frozen=True)
class QueueLine:
    """One kind of work as the backend sees it now (for the operator page)."""

    kind: TaskKind
    running: int  # tasks the node handed out that have not come back
    waiting: int | None  # tasks on the broker no worker has taken yet (None: local pools)
    workers: int | None  # processes (local) or consumers (broker) taking them; None: unknown


@dataclass(frozen=True)
class QueueView:
    """The work queue in words and numbers: which backend, and each kind of work."""

    backend: str
    lines: tuple[QueueLine, ...]


class WorkQueue(Protocol):
    """Where the node's stages send work and collect what finished.

    `submit` either takes the task (published with a confirm, or handed to a local worker) or
    raises QueueUnavailable; the caller records the job as queued only after it returns.
    `results` returns what finished since the last call, waiting up to `timeout` for something;
    every submitted task eventually yields a result for each of its keys (a worker that died
    yields WORKER_DIED or, on a broker, DEAD_LETTERED after the delivery limit). A backend that
    `announces` calls the callbacks given to `watch` when a task of that kind finishes, so that
    a stage sleeps until then; one that does not is looked at every poll interval while tasks
    are out."""

    waits_on_stop: bool  # whether a stopping node waits for the tasks it handed out
    announces: bool  # whether `watch` callbacks are called when a task finishes

    def capacity(self, kind: TaskKind) -> int:
        """How many more tasks of `kind` are worth submitting now."""
        ...

    def submit(self, task: Task) -> None: ...

    def results(self, kind: TaskKind, timeout: float) -> list[Result]: ...

    def watch(self, kind: TaskKind, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) whenever a task of `kind` finishes, if this backend
        `announces`; otherwise nothing."""
        ...

    def warnings(self) -> list[str]:
        """What /healthz should say about the queue (a broker that cannot be reached)."""
        ...

    def describe(self) -> QueueView:
        """The backend and, per kind of work, what runs, waits and takes it."""
        ...

    def close(self) -> None: ...


# -- the units of work, as any worker runs them --------------------------------------------
def run_transcode(task: TranscodeTask) -> TranscodeResult:
    """Transcode one instance; every error becomes a result (a full disk: DISK_FULL)."""
    from dicomcr.outputs import is_disk_full
    from dicomcr.transcode import transcode_file

    start = time.perf_counter()
    uid = task.sop_instance_uid
    try:
        rows = transcode_file(task.source, task.out, Path("image.dcm"), list(task.policy.targets),
                              task.policy.lossless)
    except Exception as exc:
        outcome = Outcome.DISK_FULL if is_disk_full(exc) else Outcome.FAILED
        return TranscodeResult(uid, outcome, seconds=time.perf_counter() - start,
                               peak_rss_mb=peak_rss_mb(), error=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    failed = [row for row in rows if not row.ok]
    if failed:
        return TranscodeResult(uid, Outcome.FAILED, seconds=seconds, peak_rss_mb=peak_rss_mb(),
                               error=failed[0].error)
    achieved = rows[0].achieved_cr if rows else None
    return TranscodeResult(uid, Outcome.DONE, tuple(row.output for row in rows), achieved,
                           seconds, peak_rss_mb())


def run_inference(task: InferenceTask) -> list[InferenceResult]:
    """Classify each study of the batch and write its objects; each study ends on its own."""
    from dicomcr.outputs import is_disk_full

    from ..inference import infer_study

    results = []
    for study in task.studies:
        start = time.perf_counter()
        try:
            written, probabilities = infer_study(list(study.files), task.model, task.device,
                                                 str(study.policy), study.out)
        except Exception as exc:
            outcome = Outcome.DISK_FULL if is_disk_full(exc) else Outcome.FAILED
            results.append(InferenceResult(study.study_uid, outcome,
                                           seconds=time.perf_counter() - start, error=str(exc)))
            continue
        objects = tuple(DerivedObject(w.sop_instance_uid, w.sop_class_uid, Path(w.path))
                        for w in written)
        results.append(InferenceResult(study.study_uid, Outcome.DONE, objects,
                                       {k: float(v) for k, v in probabilities.items()},
                                       time.perf_counter() - start))
    return results
