"""The forward stage: transcoded images and the node's derived objects to their destinations (a
DICOM peer by C-STORE, or an archive folder), retried with exponential back-off.

An object is marked done only when the destination answered Success (or the file is in the
archive); derived objects have UIDs that are functions of their sources, so one forwarded twice
replaces itself at the peer.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.errors

from dicomcr.config import DicomDestination, FolderDestination
from dicomcr.jobs import InstanceState, Job, ObjectKind
from dicomcr.net.scu import ClientTLS, NetworkError, Peer, send

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


def place(source: Path, target: Path) -> None:
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
        destination: DicomDestination | FolderDestination = ctx.config.destinations[name]
        failed: dict[str, str] = {}
        if isinstance(destination, FolderDestination):
            for job in jobs:
                try:
                    for path in job.outputs:
                        place(path, archive_path(Path(destination.folder), path))
                except (OSError, pydicom.errors.InvalidDicomError) as exc:  # a full or
                    # unwritable archive: retried like a peer's no
                    failed[job.sop_instance_uid] = str(exc)
                    log.warning("archiving %s into %s failed: %s", job.sop_instance_uid,
                                destination.folder, exc)
        else:
            peer = Peer(destination.host, destination.port, destination.ae_title,
                        ctx.config.node.ae_title, timeout=ctx.config.node.network_timeout,
                        tls=_client_tls(destination))
            by_path = {path: job for job in jobs for path in job.outputs}
            try:
                for result in send(peer, list(by_path)):
                    if not result.ok:
                        failed[by_path[result.path].sop_instance_uid] = result.error
            except (NetworkError, OSError, ValueError) as exc:
                failed.update({job.sop_instance_uid: str(exc) for job in jobs
                               if job.sop_instance_uid not in failed})
                log.warning("forwarding to %s failed: %s", peer, exc)
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
