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
from pathlib import Path

from dicomcr.config import DicomDestination, FolderDestination
from dicomcr.jobs import Job, ObjectKind
from dicomcr.net.scu import NetworkError, Peer, send

from .context import NodeContext

log = logging.getLogger("dicomcr.node")

BATCH = 32  # objects per association


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

    def busy(self) -> bool:
        return False

    def step(self, accepting: bool) -> None:
        if not accepting:
            return
        jobs = self.ctx.store.to_forward(BATCH)
        if not jobs:
            self.ctx.stop.wait(self.ctx.poll)
            return
        for name in dict.fromkeys((self.images, self.derived)):
            batch = [j for j in jobs if self._destination(j) == name]
            if not batch:
                continue
            start = time.perf_counter()
            self._forward(batch, self.ctx.config.destinations[name])
            for _ in batch:
                self.ctx.metrics.observe("forward", (time.perf_counter() - start) / len(batch))

    def _destination(self, job: Job) -> str:
        return self.derived if job.kind is ObjectKind.DERIVED else self.images

    def _forward(self, jobs: list[Job], destination: DicomDestination | FolderDestination) -> None:
        ctx = self.ctx
        failed: dict[str, str] = {}
        if isinstance(destination, FolderDestination):
            for job in jobs:
                try:
                    for path in job.outputs:
                        place(path, Path(destination.folder) / job.sop_instance_uid / path.name)
                except OSError as exc:  # a full or unwritable archive: retried like a peer's no
                    failed[job.sop_instance_uid] = str(exc)
                    log.warning("archiving %s into %s failed: %s", job.sop_instance_uid,
                                destination.folder, exc)
        else:
            peer = Peer(destination.host, destination.port, destination.ae_title,
                        ctx.config.node.ae_title, timeout=ctx.config.node.network_timeout)
            by_path = {path: job for job in jobs for path in job.outputs}
            try:
                for result in send(peer, list(by_path)):
                    if not result.ok:
                        failed[by_path[result.path].sop_instance_uid] = result.error
            except (NetworkError, OSError, ValueError) as exc:
                failed.update({job.sop_instance_uid: str(exc) for job in jobs
                               if job.sop_instance_uid not in failed})
                log.warning("forwarding to %s failed: %s", peer, exc)
        retry = ctx.config.forward
        for job in jobs:
            if job.sop_instance_uid in failed:
                delay = min(retry.retry_initial_seconds * 2 ** job.attempts,
                            retry.retry_max_seconds)
                ctx.store.forward_failed(job.sop_instance_uid, job.attempts + 1,
                                         time.time() + delay, failed[job.sop_instance_uid])
                ctx.metrics.count("forward_retries")
            else:
                ctx.store.done(job.sop_instance_uid)
                ctx.metrics.count("forwarded")
