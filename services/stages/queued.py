"""What the transcode and inference stages share: work handed to the work queue, and every way a
task can come back.

Each round publishes what is due (unless the node is stopping) and records what came back, then
sleeps until woken: by the queue when a task finishes, by another stage when there may be work,
or by the time the next retry falls due. How a task ended decides the job's next state, through
the job store's transition table, the same for an instance and a study:

    done            the stage records its outputs (its own `_done`)
    failed          given up, with the worker's reason (its own `_give_up`)
    dead-lettered   given up as a poison job: the broker's delivery limit (a worker died with
                    it each time)
    disk full       back to wait, tried again after DISK_RETRY_SECONDS
    not run         back to wait, nothing counted (its pool was replaced)
    worker died     a death counted and back to wait, to run alone; at node.max_worker_deaths
                    given up as a poison job. Killed with the node (a signal to its process group): nothing
                    counted, back to wait.

The job store's row is the outbox: a job is marked queued only once the queue took its task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from dicomcr.jobs import Job, StudyJob, Table

from ..workqueue import Outcome, QueueUnavailable, Result, Task, TaskKind
from .context import DISK_RETRY_SECONDS, Loop, NodeContext

log = logging.getLogger("dicomcr.node")

AnyJob = Job | StudyJob
QUEUE_RETRY_SECONDS = 2.0  # after the queue refused a task (a broker down), publish again after


class QueuedStage:
    """A stage whose work runs on the work queue; `step` is one round. Subclasses name their
    `kind`, `table`, `loop` and `worker`, and say what is due (`_due`), how due jobs become
    tasks (`_publish_due`), what a finished job means (`_done`) and how one is given up
    (`_give_up`)."""

    kind: TaskKind
    table: Table
    loop: Loop
    worker: str  # who runs the tasks, for the log ("a transcoding worker")

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.in_flight: dict[str, AnyJob] = {}  # handed out, by the job's UID
        self._queue_back_at = 0.0  # monotonic time before which the queue is not tried again
        ctx.queue.watch(self.kind, lambda: ctx.wake(self.loop))

    def busy(self) -> bool:
        """Tasks still to come back that the node waits for when it stops (local workers)."""
        return bool(self.in_flight) and self.ctx.queue.waits_on_stop

    def step(self, accepting: bool) -> None:
        if accepting:
            self._publish()
        results = self.ctx.queue.results(self.kind, 0)
        for result in results:
            self._record(result)
        if not results:
            self.ctx.sleep(self.loop, self._idle_seconds())

    def _idle_seconds(self) -> float:
        """How long to sleep with nothing to do: a queue that cannot announce results is looked
        at every `poll` while tasks are out; otherwise until the next retry falls due."""
        if self.in_flight and not self.ctx.queue.announces:
            return self.ctx.poll
        return self.ctx.until(self._next_due())

    # -- out -----------------------------------------------------------------------------------
    def _publish(self) -> None:
        """Hand out what is due, oldest first, as much as the queue takes. A job whose worker
        died before runs alone, so that a second death is its own: what is due before it is
        handed out, and it waits until nothing else is in flight (no newer job starts meanwhile,
        so it is not starved)."""
        room = self.ctx.queue.capacity(self.kind)
        if room <= 0 or time.monotonic() < self._queue_back_at or \
                any(job.worker_deaths for job in self.in_flight.values()):
            return
        ready: list[AnyJob] = []
        for job in self._due(room):
            if job.worker_deaths >= self.ctx.max_worker_deaths:
                self._give_up(job, f"worker died {job.worker_deaths} times", poison=True)
            elif job.worker_deaths:
                if not ready and not self.in_flight:
                    self._publish_due([job], room)
                    return
                break
            else:
                ready.append(job)
        self._publish_due(ready, room)

    def _hand_out(self, jobs: Sequence[AnyJob], task: Task) -> bool:
        """Submit `task` (the work of `jobs`) and mark them queued; False when the queue cannot
        take it now (the jobs stay in the job store, published later)."""
        try:
            self.ctx.queue.submit(task)
        except QueueUnavailable as exc:
            log.warning("%s; %d jobs wait in the job store, published in %g s", exc, len(jobs),
                        QUEUE_RETRY_SECONDS)
            self._queue_back_at = time.monotonic() + QUEUE_RETRY_SECONDS
            return False
        for job in jobs:
            self.ctx.store.hand_out(self.table, job.uid)
            self.in_flight[job.uid] = job
        return True

    # -- back ----------------------------------------------------------------------------------
    def _record(self, result: Result) -> None:
        job = self.in_flight.pop(result.uid, None)
        if job is None:  # a second run of a task already recorded (at-least-once delivery)
            log.debug("result for %s arrived again: already recorded", result.uid)
            return
        match result.outcome:
            case Outcome.DONE:
                self._done(job, result)
            case Outcome.FAILED:
                self._give_up(job, result.error)
            case Outcome.DEAD_LETTERED:
                self.ctx.metrics.count("dead_lettered")
                self._give_up(job, result.error, poison=True)
            case Outcome.DISK_FULL:
                self._disk_full(job, result.error)
            case Outcome.NOT_RUN:
                self.ctx.store.hand_back(self.table, job.uid)
            case Outcome.WORKER_DIED:
                self._worker_died(job)

    def _disk_full(self, job: AnyJob, error: str) -> None:
        """Its outputs met a full disk: drop what was half written, try again later."""
        ctx = self.ctx
        self._drop_partial(job)
        ctx.note_disk_full(OSError(error))
        ctx.metrics.count("disk_full_retries")
        ctx.store.retry_later(self.table, job.uid, time.time() + DISK_RETRY_SECONDS,
                              f"disk full: {error}")
        log.warning("%s met a full disk (%s): trying again in %g s", job.uid, error,
                    DISK_RETRY_SECONDS)

    def _worker_died(self, job: AnyJob) -> None:
        ctx = self.ctx
        if ctx.stopping.is_set():
            log.warning("%s ended with the node: %s stays queued", self.worker, job.uid)
            ctx.store.hand_back(self.table, job.uid)
            return
        deaths = ctx.store.count_death(self.table, job.uid)
        if deaths >= ctx.max_worker_deaths:
            self._give_up(job, f"worker died {deaths} times", poison=True)
        else:
            log.warning("%s died with %s in flight (death %d of %d): back in the queue, to run "
                        "alone", self.worker, job.uid, deaths, ctx.max_worker_deaths)

    # -- what each stage says itself -------------------------------------------------------------
    def _due(self, room: int) -> list[AnyJob]:
        """The jobs due now, oldest first (up to `room` tasks' worth)."""
        raise NotImplementedError

    def _next_due(self) -> float | None:
        """When the next job falls due that is not due now (a retry time), or None."""
        raise NotImplementedError

    def _publish_due(self, jobs: list[AnyJob], room: int) -> None:
        """Turn due jobs into tasks and hand them out (`_hand_out`), up to `room` tasks."""
        raise NotImplementedError

    def _done(self, job: AnyJob, result: Result) -> None:
        raise NotImplementedError

    def _give_up(self, job: AnyJob, reason: str, poison: bool = False) -> None:
        """Fail a job for good; `poison`: its workers died with it (or the broker gave it up)."""
        raise NotImplementedError

    def _drop_partial(self, job: AnyJob) -> None:
        """Remove what a task half wrote before it met a full disk (nothing by default)."""
