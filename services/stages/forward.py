"""The forward stage: transcoded images and the node's derived objects to their destinations (a
DICOM peer by C-STORE, a DICOMweb service by STOW-RS, or an archive folder), retried with
exponential back-off.

An object is marked done only when the destination answered Success (C-STORE), named it stored
(STOW-RS: services/dicomweb.py) or the file is in the archive; derived objects have UIDs that
are functions of their sources, so one forwarded twice replaces itself at the peer. Anything
else (a refusal with its reason, a peer down or not answering) is retried, the reason kept in
the job store and logged, one line per distinct reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.errors

from dicomcr.config import DicomDestination, DicomWebDestination, FolderDestination
from dicomcr.jobs import InstanceState, Job, ObjectKind
from dicomcr.net.scu import ClientTLS, NetworkError, Peer, SendResult, send
from dicomcr.outputs import place_durably

from ..dicomweb import StowClient
from .context import Loop, NodeContext

log = logging.getLogger("dicomcr.node")

BATCH = 32  # objects per association


@dataclass
class DestinationHealth:
    """How the last tries to deliver to one destination went (for /healthz and /metrics)."""

    failing_since: float | None = None  # the first failure of the current run of failures
    error: str = ""
    failures: int = 0  # consecutive batches that failed

    def report(self, ok: bool, error: str = "") -> None:
        if ok:
            self.failing_since, self.error, self.failures = None, "", 0
        else:
            if self.failing_since is None:
                self.failing_since = time.time()
            self.error, self.failures = error, self.failures + 1


def _client_tls(destination: DicomDestination) -> ClientTLS | None:
    """The destination's `tls:` as the SCU's TLS setting (files read at each association)."""
    tls = destination.tls
    return None if tls is None else ClientTLS(tls.ca, tls.cert, tls.key, tls.verify_hostname)


def archive_path(folder: Path, source: Path) -> Path:
    """Where a folder destination keeps an object: `<folder>/<Study Instance UID>/<SOP Instance
    UID>.dcm`, the object's own UIDs, whatever made it (transcoded, passed through, derived)."""
    header = pydicom.dcmread(source, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SOPInstanceUID"])
    return Path(folder) / str(header.StudyInstanceUID) / f"{header.SOPInstanceUID}.dcm"


class ForwardStage:
    """Sends what is ready, in batches per destination; `step` is one round."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.images = ctx.config.forward.to
        inference = ctx.config.inference
        self.derived = (inference.send_to if inference else None) or self.images
        self.health = {name: DestinationHealth() for name in dict.fromkeys(
            (self.images, self.derived))}

    def warnings(self) -> list[str]:
        """A line per destination that the last tries could not deliver to, with what waits."""
        failing = {name: h for name, h in self.health.items() if h.failing_since is not None}
        if not failing:
            return []
        backlog = self.ctx.store.forward_backlog()
        oldest = ("" if backlog.oldest_received_at is None else
                  f", the oldest received {time.time() - backlog.oldest_received_at:.0f} s ago")
        return [f"destination {name} unreachable for {time.time() - h.failing_since:.0f} s "
                f"({h.failures} failed tries; last: {h.error}): {backlog.waiting} objects "
                f"waiting{oldest}, {backlog.retries} retries so far"
                for name, h in failing.items()]

    def busy(self) -> bool:
        return False

    def step(self, accepting: bool) -> None:
        if not accepting:
            return
        jobs = self.ctx.store.to_forward(BATCH)
        if not jobs:  # until something is transcoded or derived, or a retry falls due
            self.ctx.sleep(Loop.FORWARD, self.ctx.until(
                self.ctx.store.next_due(InstanceState.TRANSCODED)))
            return
        for name in dict.fromkeys((self.images, self.derived)):
            batch = [j for j in jobs if self._destination(j) == name]
            if not batch:
                continue
            start = time.perf_counter()
            self._forward(batch, name)
            for _ in batch:
                self.ctx.metrics.observe("forward", (time.perf_counter() - start) / len(batch))

    def _destination(self, job: Job) -> str:
        return self.derived if job.kind is ObjectKind.DERIVED else self.images

    def _forward(self, jobs: list[Job], name: str) -> None:
        ctx = self.ctx
        destination = ctx.config.destinations[name]
        if isinstance(destination, FolderDestination):
            failed = _archive(jobs, Path(destination.folder))
        elif isinstance(destination, DicomWebDestination):
            failed = self._stow(jobs, destination, name)
        else:
            failed = self._store(jobs, destination)
        _log_failures(name, failed)
        self.health[name].report(len(failed) < len(jobs), next(iter(failed.values()), ""))
        retry = ctx.config.forward
        for job in jobs:
            if job.sop_instance_uid in failed:
                delay = min(retry.retry_initial_seconds * 2 ** job.attempts,
                            retry.retry_max_seconds)
                ctx.store.forward_failed(job.sop_instance_uid, job.attempts + 1,
                                         time.time() + delay, failed[job.sop_instance_uid])
                ctx.metrics.count("forward_retries")
            else:
                if not ctx.store.done(job.sop_instance_uid):
                    log.info("%s was sent again while it was forwarded: the new one is "
                             "forwarded in its turn", job.sop_instance_uid)
                ctx.metrics.count("forwarded")

    def _store(self, jobs: list[Job], destination: DicomDestination) -> dict[str, str]:
        """C-STORE the jobs' outputs in one association; the failed jobs with why."""
        peer = Peer(destination.host, destination.port, destination.ae_title,
                    self.ctx.config.node.ae_title, timeout=self.ctx.config.node.network_timeout,
                    tls=_client_tls(destination))
        by_path = {path: job for job in jobs for path in job.outputs}
        return _outcomes(jobs, by_path, lambda: send(peer, list(by_path)))

    def _stow(self, jobs: list[Job], destination: DicomWebDestination,
              name: str) -> dict[str, str]:
        """STOW-RS the jobs' outputs; the failed jobs with why. An object tried before goes in
        a request of its own (see services/dicomweb.py)."""
        by_path = {path: job for job in jobs for path in job.outputs}
        alone = {path for path, job in by_path.items() if job.attempts}

        def results() -> Iterator[SendResult]:
            with StowClient(destination, name, self.ctx.config.node.network_timeout) as client:
                yield from client.send(list(by_path), alone)

        return _outcomes(jobs, by_path, results)


def _archive(jobs: list[Job], folder: Path) -> dict[str, str]:
    """Place the jobs' outputs in the archive folder; the failed jobs with why (a full or
    unwritable archive is retried like a peer's no)."""
    failed: dict[str, str] = {}
    for job in jobs:
        try:
            for path in job.outputs:
                place_durably(path, archive_path(folder, path))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            failed[job.sop_instance_uid] = f"archiving into {folder} failed: {exc}"
    return failed


def _outcomes(jobs: list[Job], by_path: dict[Path, Job],
              results: Callable[[], Iterable[SendResult]]) -> dict[str, str]:
    """The failed jobs with why, from a result per output file: a job fails when one of its
    outputs did, and every job not answered for when the peer could not be reached (or went
    away) fails with that reason."""
    failed: dict[str, str] = {}
    answered: set[Path] = set()
    try:
        for result in results():
            answered.add(result.path)
            if not result.ok:
                failed.setdefault(by_path[result.path].sop_instance_uid, result.error)
    except (NetworkError, OSError, ValueError) as exc:
        failed.update({job.sop_instance_uid: str(exc) for job in jobs
                       if job.sop_instance_uid not in failed
                       and not answered.issuperset(job.outputs)})
    return failed


def _log_failures(name: str, failed: dict[str, str]) -> None:
    """One warning per distinct reason, with the objects it concerns."""
    by_reason: dict[str, list[str]] = {}
    for uid, reason in failed.items():
        by_reason.setdefault(reason, []).append(uid)
    for reason, uids in by_reason.items():
        more = f" and {len(uids) - 3} more" if len(uids) > 3 else ""
        log.warning("forwarding to %s failed for %s%s: %s", name, ", ".join(uids[:3]), more,
                    reason)
