"""What every stage of the node shares: the configuration, the job store, the spool, the work
queue, the metrics, and the node's state (stopping, the last full disk)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dicomcr.config import Config
from dicomcr.jobs import JobStore

from ..http import Metrics
from ..receiver import Spool, is_disk_full
from ..workqueue import Result, TaskKind, WorkQueue

log = logging.getLogger("dicomcr.node")

DISK_RETRY_SECONDS = 3.0  # work that met a full disk is tried again after this
DISK_FULL_SHOWN_SECONDS = 60.0  # /healthz reports a full disk this long after the last one


@dataclass
class NodeContext:
    """The node's shared parts, handed to each stage."""

    config: Config
    root: Path
    store: JobStore
    spool: Spool
    queue: WorkQueue
    metrics: Metrics
    poll: float = 0.2
    stop: threading.Event = field(default_factory=threading.Event)  # take nothing new
    stopping: threading.Event = field(default_factory=threading.Event)  # stop() began
    disk_full: tuple[float, str] | None = None  # when and what, the last time

    @property
    def max_worker_deaths(self) -> int:
        return self.config.node.max_worker_deaths

    def note_disk_full(self, exc: BaseException) -> None:
        """Remember a full disk for /healthz and /metrics (it may be gone by the next scrape)."""
        self.disk_full = (time.time(), str(exc))

    def recent_disk_full(self) -> tuple[float, str] | None:
        """When and what the last full disk was, if within DISK_FULL_SHOWN_SECONDS."""
        last = self.disk_full
        return last if last is not None and time.time() - last[0] < DISK_FULL_SHOWN_SECONDS \
            else None

    def wait_for_space(self, exc: BaseException) -> bool:
        """A loop met `exc`: when the disk is full, note it, wait and say go on (True); any
        other error is not the disk's (False: the loop lets it end the loop)."""
        if not is_disk_full(exc):
            return False
        self.note_disk_full(exc)
        self.metrics.count("disk_full_retries")
        log.warning("disk full (%s): trying again in %g s", exc, DISK_RETRY_SECONDS)
        self.stop.wait(DISK_RETRY_SECONDS)
        return True


class QueuedStage:
    """A stage whose work runs on the work queue: each round publishes what is ready (unless the
    node is stopping) and records what came back. Subclasses say `kind`, `_publish` and
    `_record`; `in_flight` holds what they handed out."""

    kind: TaskKind

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.in_flight: dict[str, object] = {}

    def busy(self) -> bool:
        """Tasks still to come back that the node waits for when it stops (local workers)."""
        return bool(self.in_flight) and self.ctx.queue.waits_on_stop

    def step(self, accepting: bool) -> None:
        if accepting:
            self._publish()
        for result in self.ctx.queue.results(self.kind, self.ctx.poll):
            self._record(result)

    def _publish(self) -> None:
        raise NotImplementedError

    def _record(self, result: Result) -> None:
        raise NotImplementedError
