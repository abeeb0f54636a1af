"""What every stage of the node shares: the configuration, the storage folder and its job store,
the work queue, the metrics, and the node's state (stopping, the last full disk); and how a
stage with nothing to do sleeps until there may be something (`wake`), never polling in a tight
loop."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

from dicomcr.config import Config
from dicomcr.jobs import JobStore, Storage
from dicomcr.jobs.spool import UidLocks
from dicomcr.outputs import is_disk_full

from ..metrics import Metrics
from ..workqueue import WorkQueue

log = logging.getLogger("dicomcr.node")

DISK_RETRY_SECONDS = 3.0  # work that met a full disk is tried again after this
DISK_FULL_SHOWN_SECONDS = 60.0  # /healthz reports a full disk this long after the last one
# A stage with nothing to do looks at the job store again after this even when nothing woke it:
# `dicomcr retry` and other processes change the store without telling the node.
IDLE_CHECK_SECONDS = 2.0


class Loop(StrEnum):
    """The node's stages that run in a thread of their own (receive runs in pynetdicom's). The
    values are the `loop` labels of /healthz and /metrics."""

    TRANSCODE = "transcode"
    INFER = "inference"
    FORWARD = "forward"
    RETENTION = "retention"


@dataclass
class NodeContext:
    """The node's shared parts, handed to each stage."""

    config: Config
    storage: Storage
    store: JobStore
    queue: WorkQueue
    metrics: Metrics
    poll: float = 0.2  # how often a stage looks for results a backend cannot announce
    stop: threading.Event = field(default_factory=threading.Event)  # take nothing new
    stopping: threading.Event = field(default_factory=threading.Event)  # stop() began
    disk_full: tuple[float, str] | None = None  # when and what, the last time
    wakes: dict[Loop, threading.Event] = field(
        default_factory=lambda: {loop: threading.Event() for loop in Loop})
    # held while an instance's files are replaced (receive) or deleted (retention)
    uid_locks: UidLocks = field(default_factory=UidLocks)

    @property
    def max_worker_deaths(self) -> int:
        return self.config.node.max_worker_deaths

    # -- waking ------------------------------------------------------------------------------
    def wake(self, *loops: Loop) -> None:
        """There may be work for `loops` (an instance received, a task finished, the node
        stopping): they look now instead of at their next timer."""
        for loop in loops:
            self.wakes[loop].set()

    def sleep(self, loop: Loop, seconds: float) -> None:
        """Let `loop` wait until woken or `seconds` passed (at most IDLE_CHECK_SECONDS)."""
        event = self.wakes[loop]
        event.wait(max(0.0, min(seconds, IDLE_CHECK_SECONDS)))
        event.clear()

    def until(self, when: float | None) -> float:
        """Seconds from now to the time `when` (a retry falling due), IDLE_CHECK_SECONDS for
        none."""
        return IDLE_CHECK_SECONDS if when is None else when - time.time()

    def stop_all(self) -> None:
        """Take nothing new, and wake every loop so that it sees it."""
        self.stop.set()
        self.wake(*Loop)

    # -- a full disk ---------------------------------------------------------------------------
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
