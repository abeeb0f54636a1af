"""The node: the SCP (pynetdicom), the transcoding pool and the forwarder, over the job store.

Each piece is small: receiver.accept decides about one instance, dicomcr.transcode.transcode_file
transcodes one, dicomcr.net.scu.send forwards. This module wires them to threads and process
pools, and drains them on SIGTERM.

Faults cost a retry, never an image or a stall: a worker process that dies is replaced (its
jobs go back to the queue and count the death; `node.max_worker_deaths` deaths fail a job and
quarantine its source), a full disk answers Out of Resources and puts work back for later, and a
loop that ends on its own turns /healthz to 503 and makes `serve_forever` exit non-zero, so that
the service manager restarts the node and the job store resumes the work.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sqlite3
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from dicomcr.config import UNKNOWN_AE_POLICY, Config, DicomDestination, FolderDestination
from dicomcr.net.scu import NetworkError, Peer, send
from dicomcr.transcode import ManifestRow, transcode_file

from .http import Gauge, Metrics, serve_http
from .inference import infer_study
from .receiver import (
    OUT_OF_RESOURCES,
    SUCCESS,
    DiskReserve,
    DiskSpace,
    Outcome,
    Spool,
    accept,
    disk_full_said_plainly,
    is_disk_full,
    quarantine,
)
from .store import DERIVED, Job, JobStore, StudyJob, StudyState

log = logging.getLogger("dicomcr.node")

EXIT_LOOP_FAILED = 70  # sysexits' EX_SOFTWARE: a loop of the node ended on its own
DISK_RETRY_SECONDS = 3.0  # work that met a full disk is tried again after this
DISK_FULL_SHOWN_SECONDS = 60.0  # /healthz reports a full disk this long after the last one
PASS_THROUGH = -1  # the "generation" of a job that runs in no pool
PR_SET_NAME = 15  # prctl(2)

STORAGE_CLASSES = (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ComputedRadiographyImageStorage,
    SecondaryCaptureImageStorage,
)
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K,
)


def _place(source: Path, target: Path) -> None:
    """Put `source` at `target` atomically: a hard link when on the same file system (no bytes
    copied), else a copy; an earlier file there is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, target)


class Loop(Enum):
    """The node's long-running loops, each in a thread of its own."""

    TRANSCODE = "transcode"
    FORWARD = "forward"
    INFERENCE = "inference"


class NodeStatus(StrEnum):
    """What /healthz says; anything but OK is answered 503."""

    OK = "ok"
    LOW_DISK = "low_disk"  # new instances are answered Out of Resources; the rest goes on
    STOPPING = "stopping"  # draining after SIGTERM
    FAILED = "failed"  # a loop ended on its own or the job store fails: the process exits


@dataclass(frozen=True)
class LoopFailure:
    """A loop that ended for a reason other than shutdown."""

    loop: Loop
    error: str

    def __str__(self) -> str:
        return f"{self.loop.value} loop stopped: {self.error}"


@dataclass(frozen=True)
class InFlight:
    """A transcoding job handed to the pool: the future, and the pool generation it runs in."""

    job: Job
    future: Future
    generation: int


def _transcode_job(source: Path, out: Path, relative: Path, targets: list[float],
                   lossless: bool) -> list[ManifestRow]:
    """transcode_file, as a worker runs it: a full disk reaches the node as OSError(ENOSPC)."""
    try:
        return transcode_file(source, out, relative, targets, lossless)
    except Exception as exc:
        plain = disk_full_said_plainly(exc)
        if plain is exc:
            raise
        raise plain from None


def _name_process(name: str) -> None:
    """Initializer of a worker process: name it (ps, top, /proc/PID/comm shows `name`) so that an
    operator tells the transcoding workers from the inference process; ignore SIGINT, so that a
    Ctrl-C to the terminal's process group lets the node drain its workers instead of killing
    them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class WorkerPool:
    """Spawned worker processes that outlive a worker's death.

    A ProcessPoolExecutor whose worker dies is broken for good: every future in flight fails with
    BrokenProcessPool, and so does every later submit. This one is rebuilt, once per break (the
    generation tells a failure of the old pool from one of the new) and `on_death` called; the
    caller puts the jobs that were in flight back in the queue. Spawned, not forked: a forked
    worker would inherit the listening socket and keep the port busy after the node itself was
    killed."""

    def __init__(self, size: int, name: str, on_death: Callable[[], None] = lambda: None) -> None:
        self.size, self.name, self._on_death = size, name, on_death
        self.generation = 0
        self._lock = threading.Lock()
        self._executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.size, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_name_process, initargs=(self.name,))

    def submit(self, fn: Callable, /, *args: object) -> tuple[Future, int]:
        """Run `fn(*args)` in a worker; the future and the generation it runs in."""
        with self._lock:
            try:
                return self._executor.submit(fn, *args), self.generation
            except BrokenProcessPool:  # broke since our last look: its futures will say so too
                self._rebuild()
                return self._executor.submit(fn, *args), self.generation

    def broken(self, generation: int) -> None:
        """A future of `generation` failed with BrokenProcessPool: rebuild, unless done already."""
        with self._lock:
            if generation == self.generation:
                self._rebuild()

    def _rebuild(self) -> None:
        old, self._executor = self._executor, self._new()
        self.generation += 1
        old.shutdown(wait=False, cancel_futures=True)
        self._on_death()

    def shutdown(self) -> None:
        with self._lock:
            self._executor.shutdown(wait=True)


class _IncomingFile:
    """The file one arriving dataset is written into; see IncomingFiles."""

    def __init__(self, folder: Path, dropped: str | None,
                 on_full: Callable[[BaseException], None]) -> None:
        self.dropped = dropped  # why the dataset is not being kept, or None
        self._on_full = on_full
        self.file = self  # pynetdicom flushes through `.file`
        try:
            self._fd, self.name = tempfile.mkstemp(suffix=".dcm", dir=folder)
        except OSError as exc:  # not even an empty file fits: a name, and nothing kept
            if not is_disk_full(exc):
                raise
            self._fd, self.name = -1, str(folder / f"unwritten-{os.urandom(8).hex()}.dcm")
            self.dropped = f"the disk is full ({exc.strerror})"
            on_full(exc)

    def write(self, data: bytes) -> int:
        if self.dropped is None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self.dropped = f"the disk filled up while the instance arrived ({exc.strerror})"
                os.ftruncate(self._fd, 0)  # give the space back at once
                self._on_full(exc)
        return len(data)

    def flush(self) -> None:  # unbuffered: every write is already the file's
        pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # an association aborted mid-instance never closes it
        self.close()


class IncomingFiles:
    """What pynetdicom writes each arriving C-STORE dataset into: a file in storage/incoming/.

    It takes the place of pynetdicom's NamedTemporaryFile because a write that fails there
    aborts the association, so that a full disk left every later instance without an answer.
    Here a write that meets a full disk drops the rest of that dataset instead, and a dataset
    that begins while free space is below the reserve is not written at all; the C-STORE handler
    asks `dropped` and answers Out of Resources on the same association."""

    def __init__(self, folder: Path, disk: DiskReserve,
                 on_full: Callable[[BaseException], None]) -> None:
        self.folder, self.disk, self._on_full = folder, disk, on_full
        self._lock = threading.Lock()
        self._files: weakref.WeakValueDictionary[str, _IncomingFile] = \
            weakref.WeakValueDictionary()

    def __call__(self, *_: object, **__: object) -> _IncomingFile:
        """pynetdicom's call: NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")."""
        space = self.disk.space()
        dropped = (f"{space.free_bytes / 2**20:.0f} MiB free, below the "
                   f"{space.reserve_bytes / 2**20:.0f} MiB reserve") if space.low else None
        incoming = _IncomingFile(self.folder, dropped, self._on_full)
        with self._lock:
            self._files[incoming.name] = incoming
        return incoming

    def dropped(self, path: Path) -> str | None:
        """Why the dataset at `path` was not kept, or None when it arrived whole."""
        with self._lock:
            incoming = self._files.get(str(path))
        return incoming.dropped if incoming is not None else None


class Node:
    """One running node; `start` returns at once, `stop` drains and returns."""

    def __init__(self, config: Config, poll_seconds: float = 0.2) -> None:
        self.config = config
        self.root = Path(config.node.storage)
        self.spool = Spool(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.root / "jobs.sqlite")
        self.disk = DiskReserve(self.root, int(config.node.disk_reserve_mb * 2**20))
        self.poll = poll_seconds
        workers = config.node.workers
        self.workers = (os.cpu_count() or 1) if workers == "auto" else int(workers)
        self.max_worker_deaths = config.node.max_worker_deaths
        self.metrics = Metrics()
        self._stop = threading.Event()  # the loops: finish what runs, take nothing new
        self._stopping = threading.Event()  # stop() began (associations drain first)
        self._wake = threading.Event()  # serve_forever: a signal, or a loop that failed
        self._server = None
        self._http = None
        self._pool: WorkerPool | None = None
        self._infer_pool: WorkerPool | None = None
        self._incoming: IncomingFiles | None = None
        self._threads: dict[Loop, threading.Thread] = {}
        self._failures: dict[Loop, LoopFailure] = {}
        self._disk_full: tuple[float, str] | None = None  # when and what, the last time
        inference = config.inference
        default_model = inference.model if inference else None
        self.models = {site.name: site.model or default_model for site in config.sites}
        self.models["unknown"] = default_model
        self.inference_device = inference.device if inference else "auto"
        self.inference_warning: str | None = None

    # -- receiving -----------------------------------------------------------------------
    def _ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu
        ae.acse_timeout, ae.dimse_timeout = node.acse_timeout, node.dimse_timeout
        ae.network_timeout = node.network_timeout
        ae.require_called_aet = True
        if not self.config.accepts_any_ae:
            ae.require_calling_aet = [t for s in self.config.sites for t in s.calling_ae]
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        site = self.config.site_for(calling)
        if site is None:  # accepted as unknown (accept_unknown_ae): the built-in default, CR 20
            site_name, policy = "unknown", UNKNOWN_AE_POLICY
        else:
            site_name, policy = site.name, site.policy
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        start = time.perf_counter()
        received = Path(event.dataset_path)
        dropped = self._incoming.dropped(received) if self._incoming else None
        if dropped is not None:
            received.unlink(missing_ok=True)
            status, outcome, reason = OUT_OF_RESOURCES, Outcome.NO_SPACE, dropped
        else:
            verdict = accept(
                received, sop_class_uid=str(request.AffectedSOPClassUID), sop_instance_uid=uid,
                calling_ae=calling, site=site_name, policy=policy, spool=self.spool,
                store=self.store, max_bytes=int(self.config.node.max_instance_mb * 2**20),
                disk=self.disk)
            status, outcome, reason = verdict.status, verdict.outcome, verdict.reason
        self.metrics.observe("receive", time.perf_counter() - start)
        self.metrics.count("received" if status == SUCCESS else "rejected")
        if outcome is Outcome.NO_SPACE:
            self.metrics.count("out_of_space")
        if status != SUCCESS:
            log.warning("instance %s from %s answered 0x%04X: %s", uid, calling, status, reason)
        return status

    # -- faults: full disks and failed loops ----------------------------------------------
    def _note_disk_full(self, exc: BaseException) -> None:
        """Remember a full disk for /healthz and /metrics (it may be gone by the next scrape)."""
        self._disk_full = (time.time(), str(exc))

    def _wait_for_space(self, exc: BaseException) -> bool:
        """A loop met `exc`: when the disk is full, note it, wait and say go on (True); any
        other error is not the disk's (False: the loop lets it end the loop)."""
        if not is_disk_full(exc):
            return False
        self._note_disk_full(exc)
        self.metrics.count("disk_full_retries")
        log.warning("disk full (%s): trying again in %g s", exc, DISK_RETRY_SECONDS)
        self._stop.wait(DISK_RETRY_SECONDS)
        return True

    def _recent_disk_full(self) -> tuple[float, str] | None:
        """When and what the last full disk was, if within DISK_FULL_SHOWN_SECONDS."""
        last = self._disk_full
        return last if last is not None and time.time() - last[0] < DISK_FULL_SHOWN_SECONDS \
            else None

    def _disk_low(self, space: DiskSpace) -> bool:
        return space.low or self._recent_disk_full() is not None

    def _run_loop(self, loop: Loop, target: Callable[[], None]) -> None:
        """Run one loop; one that ends before shutdown is recorded and wakes serve_forever."""
        try:
            target()
        except BaseException as exc:
            failure = LoopFailure(loop, f"{type(exc).__name__}: {exc}")
            log.exception("%s", failure)
        else:
            if self._stop.is_set():
                return
            failure = LoopFailure(loop, "it returned before shutdown")
            log.error("%s", failure)
        self._failures[loop] = failure
        self._wake.set()

    @property
    def failures(self) -> list[LoopFailure]:
        """The loops that ended on their own, with why."""
        return list(self._failures.values())

    # -- transcoding -----------------------------------------------------------------------
    def _transcode_loop(self) -> None:
        running: dict[str, InFlight] = {}
        while not self._stop.is_set() or running:
            try:
                if not self._stop.is_set():
                    self._fill(running)
                if running:
                    wait([item.future for item in running.values()], timeout=self.poll,
                         return_when=FIRST_COMPLETED)
                else:
                    self._stop.wait(self.poll)
                died = []
                for uid, item in list(running.items()):
                    if not item.future.done():
                        continue
                    del running[uid]
                    if item.future.cancelled():  # its pool was replaced: the job is still queued
                        continue
                    if isinstance(item.future.exception(), BrokenProcessPool):
                        died.append(item)
                    else:
                        self._transcoded(item)
                if died:
                    self._transcode_workers_died(died)
            except (OSError, sqlite3.OperationalError) as exc:
                if not self._wait_for_space(exc):
                    raise

    def _fill(self, running: dict[str, InFlight]) -> None:
        """Hand queued jobs to the pool, one per worker, oldest first. A job that was in flight
        when a worker died runs alone, so that a second death is its own; while it waits for
        the others to finish no newer job starts, so it is not starved."""
        if len(running) >= self.workers or any(i.job.worker_deaths for i in running.values()):
            return
        for job in self.store.to_transcode(len(running) + self.workers):
            uid = job.sop_instance_uid
            if uid in running:
                continue
            if job.worker_deaths >= self.max_worker_deaths:
                self._give_up(job, f"worker died {job.worker_deaths} times")
                continue
            if job.worker_deaths:
                if not running:
                    running[uid] = self._submit(job)
                return
            running[uid] = self._submit(job)
            if len(running) >= self.workers:
                return

    def _submit(self, job: Job) -> InFlight:
        out = self.root / "out" / job.sop_instance_uid
        if job.policy == "none":
            future: Future = Future()
            future.set_result([job.spool_path])
            return InFlight(job, future, PASS_THROUGH)
        targets = [] if job.policy == "lossless" else [float(job.policy)]
        future, generation = self._pool.submit(_transcode_job, job.spool_path, out,
                                               Path("image.dcm"), targets, job.policy == "lossless")
        return InFlight(job, future, generation)

    def _transcoded(self, item: InFlight) -> None:
        uid = item.job.sop_instance_uid
        try:
            result = item.future.result()
        except Exception as exc:
            if is_disk_full(exc):  # a retry later, not a failure
                self._transcode_later(item.job, exc)
                return
            log.error("transcoding %s failed: %s", uid, exc)
            self.store.failed(uid, f"worker error: {exc}")
            self.metrics.count("failed")
            return
        if result and isinstance(result[0], Path):  # pass-through
            self.store.transcoded(uid, result)
            self.metrics.count("transcoded")
            return
        failed = [row for row in result if row.status != "ok"]
        if failed:
            self.store.failed(uid, failed[0].error)
            self.metrics.count("failed")
            log.warning("instance %s not transcoded: %s", uid, failed[0].error)
        else:
            self.store.transcoded(uid, [Path(row.output) for row in result])
            self.metrics.count("transcoded")
            self.metrics.observe("transcode", sum(float(row.seconds or 0) for row in result))

    def _transcode_later(self, job: Job, exc: BaseException) -> None:
        """Its outputs met a full disk: drop what was half written, try again later."""
        for partial in (self.root / "out" / job.sop_instance_uid).rglob(".*.partial"):
            partial.unlink(missing_ok=True)
        self._note_disk_full(exc)
        self.metrics.count("disk_full_retries")
        self.store.retry_transcode(job.sop_instance_uid, time.time() + DISK_RETRY_SECONDS,
                                   f"disk full: {exc}")
        log.warning("transcoding %s met a full disk (%s): trying again in %g s",
                    job.sop_instance_uid, exc, DISK_RETRY_SECONDS)

    def _transcode_workers_died(self, died: list[InFlight]) -> None:
        """A worker died: a new pool, and each job that was in flight counts the death and goes
        back to the queue, or, at max_worker_deaths, fails with its source quarantined."""
        for generation in {item.generation for item in died}:
            self._pool.broken(generation)
        if self._stopping.is_set():  # killed with the node (a signal to its process group)
            log.warning("transcoding workers ended with the node: %d jobs stay queued, no death "
                        "counted", len(died))
            return
        for item in died:
            deaths = self.store.worker_died(item.job.sop_instance_uid)
            if deaths >= self.max_worker_deaths:
                self._give_up(item.job, f"worker died {deaths} times")
            else:
                log.warning("a transcoding worker died with %s in flight (death %d of %d): back "
                            "in the queue, to run alone", item.job.sop_instance_uid, deaths,
                            self.max_worker_deaths)

    def _give_up(self, job: Job, reason: str) -> None:
        """Fail an instance for good: its source goes to quarantine beside the reason."""
        uid = job.sop_instance_uid
        try:
            where: Path | None = quarantine(self.spool, job.spool_path, reason, uid)
        except FileNotFoundError:  # moved there already by an earlier try
            where = None
        self.store.failed(uid, reason, quarantined=where)
        self.metrics.count("failed")
        log.error("instance %s failed: %s; its source is in %s", uid, reason,
                  where or "quarantine")

    # -- forwarding ------------------------------------------------------------------------
    def _forward_loop(self) -> None:
        images = self.config.forward.to
        derived = (self.config.inference.send_to if self.config.inference else None) or images
        while not self._stop.is_set():
            try:
                jobs = self.store.to_forward(32)
                if not jobs:
                    self._stop.wait(self.poll)
                    continue
                for name in dict.fromkeys((images, derived)):
                    batch = [j for j in jobs if (derived if j.policy == DERIVED else images) == name]
                    if not batch:
                        continue
                    start = time.perf_counter()
                    self._forward(batch, self.config.destinations[name])
                    for _ in batch:
                        self.metrics.observe("forward", (time.perf_counter() - start) / len(batch))
            except (OSError, sqlite3.OperationalError) as exc:
                if not self._wait_for_space(exc):
                    raise

    def _forward(self, jobs: list[Job], destination) -> None:
        failed: dict[str, str] = {}
        if isinstance(destination, FolderDestination):
            for job in jobs:
                try:
                    for path in job.outputs:
                        _place(path, Path(destination.folder) / job.sop_instance_uid / path.name)
                except OSError as exc:  # a full or unwritable archive: retried like a peer's no
                    failed[job.sop_instance_uid] = str(exc)
                    log.warning("archiving %s into %s failed: %s", job.sop_instance_uid,
                                destination.folder, exc)
        else:
            assert isinstance(destination, DicomDestination)
            peer = Peer(destination.host, destination.port, destination.ae_title,
                        self.config.node.ae_title, timeout=self.config.node.network_timeout)
            by_path = {path: job for job in jobs for path in job.outputs}
            try:
                for result in send(peer, list(by_path)):
                    if not result.ok:
                        failed[by_path[result.path].sop_instance_uid] = result.error
            except (NetworkError, OSError, ValueError) as exc:
                failed.update({job.sop_instance_uid: str(exc) for job in jobs
                               if job.sop_instance_uid not in failed})
                log.warning("forwarding to %s failed: %s", peer, exc)
        retry = self.config.forward
        for job in jobs:
            if job.sop_instance_uid in failed:
                delay = min(retry.retry_initial_seconds * 2 ** job.attempts, retry.retry_max_seconds)
                self.store.forward_failed(job.sop_instance_uid, job.attempts + 1,
                                          time.time() + delay, failed[job.sop_instance_uid])
                self.metrics.count("forward_retries")
            else:
                self.store.done(job.sop_instance_uid)
                self.metrics.count("forwarded")

    # -- inference -----------------------------------------------------------------------
    def _inference_ready(self) -> bool:
        """Load every configured model once here; a model that fails disables inference. With
        no model configured torch is never imported (the node starts in about a second)."""
        models = sorted({str(m) for m in self.models.values() if m is not None})
        if not models:
            return False
        from dicomcr.models.modelfile import ModelFileError, load_model

        for model in models:
            try:
                load_model(Path(model))
            except (ModelFileError, OSError) as exc:
                self.inference_warning = f"inference disabled: {exc}"
                log.error("%s; transcoding and forwarding go on", self.inference_warning)
                return False
        return True

    def _inference_loop(self) -> None:
        stable = self.config.node.stable_seconds
        while not self._stop.is_set():
            try:
                ready = self.store.studies_to_infer(stable)
                for study in ready:
                    if self._stop.is_set():
                        break
                    self._infer(study)
                if not ready:
                    self._stop.wait(self.poll)
            except (OSError, sqlite3.OperationalError) as exc:
                if not self._wait_for_space(exc):
                    raise

    def _infer(self, study: StudyJob) -> None:
        uid, site = study.study_uid, study.site
        model = self.models.get(site)
        if model is None:
            self.store.study_done(uid, StudyState.SKIPPED, f"site {site} has no model")
            return
        if study.worker_deaths >= self.max_worker_deaths:
            self._study_failed(uid, f"worker died {study.worker_deaths} times")
            return
        configured = self.config.site_for_name(site)
        policy = configured.policy if configured else UNKNOWN_AE_POLICY
        start = time.perf_counter()
        future, generation = self._infer_pool.submit(
            infer_study, list(study.files), Path(model), self.inference_device, policy,
            self.root / "derived" / uid)
        try:
            written, probabilities = future.result()
        except BrokenProcessPool:  # the process died: a new one, and the study waits again
            self._infer_pool.broken(generation)
            if self._stopping.is_set():  # killed with the node: no death counted
                log.warning("the inference process ended with the node: study %s waits", uid)
                return
            deaths = self.store.study_worker_died(uid)
            if deaths >= self.max_worker_deaths:
                self._study_failed(uid, f"worker died {deaths} times")
            else:
                log.warning("the inference process died with study %s in flight (death %d of "
                            "%d): it waits to be classified again", uid, deaths,
                            self.max_worker_deaths)
            return
        except Exception as exc:  # a study that cannot be classified: said, the rest goes on
            if is_disk_full(exc):
                self._note_disk_full(exc)
                self.metrics.count("disk_full_retries")
                self.store.study_retry(uid, time.time() + DISK_RETRY_SECONDS, f"disk full: {exc}")
                log.warning("inference of study %s met a full disk: trying again in %g s", uid,
                            DISK_RETRY_SECONDS)
                return
            self._study_failed(uid, str(exc))
            return
        for item in written:
            self.store.derived(sop_instance_uid=item.sop_instance_uid,
                               sop_class_uid=item.sop_class_uid, study_uid=uid, site=site,
                               path=item.path)
        self.store.study_done(uid)
        self.metrics.count("inferred")
        self.metrics.observe("inference", time.perf_counter() - start)
        log.info("study %s classified: %s", uid,
                 ", ".join(f"{k} {v:.3f}" for k, v in sorted(probabilities.items())))

    def _study_failed(self, study: str, reason: str) -> None:
        log.warning("inference of study %s failed: %s", study, reason)
        self.store.study_done(study, StudyState.FAILED, reason)
        self.metrics.count("inference_failed")

    # -- life cycle ----------------------------------------------------------------------
    def _receive_into_files(self) -> None:
        """Have pynetdicom write each incoming dataset straight to a file in storage/incoming/
        (no copy of the image in memory; the spool rename moves no bytes), through
        IncomingFiles, which answers a full disk instead of aborting the association."""
        self.spool.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.spool.incoming.glob("*.dcm"):  # never acknowledged: the peer resends
            stale.unlink()
        _config.STORE_RECV_CHUNKED_DATASET = True
        self._incoming = IncomingFiles(self.spool.incoming, self.disk, self._note_disk_full)
        if hasattr(dimse_messages, "NamedTemporaryFile"):
            dimse_messages.NamedTemporaryFile = self._incoming
        else:  # another pynetdicom: its own temporary files, and a full disk aborts associations
            log.warning("pynetdicom %s writes incoming datasets its own way: a full disk will "
                        "abort associations", getattr(dimse_messages, "__version__", ""))
            tempfile.tempdir = str(self.spool.incoming)

    def start(self) -> None:
        self._pool = WorkerPool(self.workers, "dicomcr-encode",
                                lambda: self.metrics.count("transcode_worker_deaths"))
        self._receive_into_files()
        node = self.config.node
        self._server = self._ae().start_server(
            (node.host, node.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            ssl_context=self._tls())
        if node.http_port:
            self._http = serve_http(node.host, node.http_port, self.metrics, self.store.counts,
                                    self.health, self._gauges)
        loops = {Loop.TRANSCODE: self._transcode_loop, Loop.FORWARD: self._forward_loop}
        if self._inference_ready():
            self._infer_pool = WorkerPool(1, "dicomcr-infer",
                                          lambda: self.metrics.count("inference_worker_deaths"))
            loops[Loop.INFERENCE] = self._inference_loop
        for loop, target in loops.items():
            thread = threading.Thread(target=self._run_loop, args=(loop, target),
                                      name=f"{loop.value}-loop", daemon=True)
            thread.start()
            self._threads[loop] = thread
        log.info("listening on %s:%d as %s", node.host, node.port, node.ae_title)

    def _tls(self) -> ssl.SSLContext | None:
        """The server's TLS context (DICOM TLS profile: TLS 1.2 or later), when configured."""
        tls = self.config.node.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert, tls.key)
        if tls.ca is not None:  # client certificates required, checked against this CA
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(tls.ca)
        return context

    def health(self) -> dict:
        """What /healthz reports: "ok" while every loop runs and the disk has room; otherwise the
        status says what is wrong and the warnings name it (inference trouble only warns)."""
        warnings = [str(failure) for failure in self.failures]
        try:
            counts, studies = self.store.counts(), self.store.study_states()
            store_ok = True
        except sqlite3.Error as exc:
            counts, studies, store_ok = {}, {}, False
            warnings.append(f"job store {self.store.path}: {exc}")
        space = self.disk.space()
        if space.low:
            warnings.append(f"low disk: {space.free_bytes / 2**20:.0f} MiB free in {self.root}, "
                            f"below the {space.reserve_bytes / 2**20:.0f} MiB reserve: new "
                            "instances are answered Out of Resources (0xA700)")
        full = self._recent_disk_full()
        if full is not None:
            when, error = full
            warnings.append(f"disk full {time.time() - when:.0f} s ago ({error}): what met it is "
                            "tried again")
        if self.inference_warning:
            warnings.append(self.inference_warning)
        if self.failures or not store_ok:
            status = NodeStatus.FAILED
        elif self._stopping.is_set():
            status = NodeStatus.STOPPING
        elif self._disk_low(space):
            status = NodeStatus.LOW_DISK
        else:
            status = NodeStatus.OK
        return {
            "status": status.value,
            "ae_title": self.config.node.ae_title,
            "uptime_seconds": round(time.time() - self.metrics.started, 1),
            "queue_depth": sum(c["received"] + c["transcoded"] for c in counts.values()),
            "studies": studies,
            "loops": {loop.value: "running" if thread.is_alive() else
                      str(self._failures.get(loop, "stopped")) for loop, thread in
                      self._threads.items()},
            "disk": {"free_mb": round(space.free_bytes / 2**20, 1),
                     "reserve_mb": round(space.reserve_bytes / 2**20, 1),
                     "low": self._disk_low(space)},
            "warnings": warnings,
        }

    def _gauges(self) -> list[Gauge]:
        """The node's state for /metrics: disk space against the reserve, the loops running."""
        space = self.disk.space()
        gauges = [
            Gauge("disk_free_bytes", "Free space in the storage folder.", space.free_bytes),
            Gauge("disk_reserve_bytes", "Free space the node keeps (node.disk_reserve_mb).",
                  space.reserve_bytes),
            Gauge("disk_low", "1 while the disk is below the reserve or was full in the last "
                  f"{DISK_FULL_SHOWN_SECONDS:g} s.", int(self._disk_low(space))),
        ]
        gauges += [Gauge("loop_up", "1 while the loop runs.", int(thread.is_alive()),
                         {"loop": loop.value}) for loop, thread in self._threads.items()]
        return gauges

    def stop(self) -> None:
        """Stop accepting, let running associations and jobs finish, then close. /healthz keeps
        answering (503, stopping or failed) until the end."""
        self._stopping.set()
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()  # no new associations; the running ones finish
            deadline = time.monotonic() + self.config.node.network_timeout

            def running() -> list:  # released or rejected ones may linger until a timer ends
                return [a for a in server.active_associations if a.is_established]

            while running() and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:  # stalled past the timeout, or finished
                assoc.abort()
        self._stop.set()
        for thread in self._threads.values():
            thread.join()
        for pool in (self._pool, self._infer_pool):
            if pool is not None:
                pool.shutdown()
        if self._http is not None:
            self._http.shutdown()
        self.store.close()

    def serve_forever(self) -> int:
        """Run until SIGTERM or SIGINT, then drain and return the exit status: 0, or
        EXIT_LOOP_FAILED when a loop ended on its own (drained as well), so that systemd or
        compose restarts the node and the job store resumes the work."""
        def stopping(*_: object) -> None:  # at once: workers signalled with the node
            self._stopping.set()  # (its process group) must not count as deaths
            self._wake.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stopping)
        self.start()
        self._wake.wait()
        failures = self.failures
        if failures:
            log.error("stopping: %s; exiting with status %d for a restart",
                      "; ".join(map(str, failures)), EXIT_LOOP_FAILED)
        else:
            log.info("stopping: draining associations and jobs")
        self.stop()
        return EXIT_LOOP_FAILED if failures else 0
