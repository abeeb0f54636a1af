"""The transcode stage: acknowledged instances to the work queue, and what comes back into the job
store.

The job store's row is the outbox: an instance is marked queued only once the queue took its task
(a local worker, or RabbitMQ's confirm). What a dead node had queued is queued again when the node
starts; a task that runs twice writes the same files. A pass-through site's instances need no
worker: their source is their output.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dicomcr.jobs import Job

from ..receiver import quarantine
from ..workqueue import Outcome, QueueUnavailable, TaskKind, TranscodeResult, TranscodeTask
from .context import DISK_RETRY_SECONDS, NodeContext, QueuedStage

log = logging.getLogger("dicomcr.node")


class TranscodeStage(QueuedStage):
    """Publishes what is to transcode and records the results; `step` is one round."""

    in_flight: dict[str, Job]  # handed out, by SOP Instance UID
    kind = TaskKind.TRANSCODE

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.peak_rss_mb = 0.0  # the largest a worker process has been, for /metrics

    # -- out ---------------------------------------------------------------------------------
    def _publish(self) -> None:
        """Hand queued jobs to the queue, oldest first, as many as it takes. A job that was in
        flight when a worker died runs alone, so that a second death is its own; while it waits
        for the others to finish no newer job starts, so it is not starved."""
        ctx = self.ctx
        room = ctx.queue.capacity(self.kind)
        if room <= 0 or any(job.worker_deaths for job in self.in_flight.values()):
            return
        for job in ctx.store.to_transcode(room):
            uid = job.sop_instance_uid
            if job.worker_deaths >= ctx.max_worker_deaths:
                self._give_up(job, f"worker died {job.worker_deaths} times")
                continue
            if not job.policy.transcodes:  # pass-through: the source is the output
                ctx.store.transcoded(uid, [job.spool_path])
                ctx.metrics.count("transcoded")
                continue
            if job.worker_deaths and self.in_flight:
                return
            task = TranscodeTask(uid, job.spool_path, ctx.root / "out" / uid, job.policy)
            try:
                ctx.queue.submit(task)
            except QueueUnavailable as exc:
                log.warning("%s; %s stays in the spool, published later", exc, uid)
                return
            ctx.store.queued(uid)
            self.in_flight[uid] = job
            if job.worker_deaths:
                return

    # -- back --------------------------------------------------------------------------------
    def _record(self, result: TranscodeResult) -> None:
        ctx, uid = self.ctx, result.sop_instance_uid
        job = self.in_flight.pop(uid, None)
        if job is None:  # a second run of a task already recorded (at-least-once delivery)
            log.debug("result for %s arrived again: already recorded", uid)
            return
        self.peak_rss_mb = max(self.peak_rss_mb, result.peak_rss_mb)
        match result.outcome:
            case Outcome.DONE:
                ctx.store.transcoded(uid, list(result.outputs))
                ctx.metrics.count("transcoded")
                ctx.metrics.observe("transcode", result.seconds)
            case Outcome.FAILED:
                ctx.store.failed(uid, result.error)
                ctx.metrics.count("failed")
                log.warning("instance %s not transcoded: %s", uid, result.error)
            case Outcome.DISK_FULL:
                self._later(job, result.error)
            case Outcome.NOT_RUN:
                ctx.store.requeue(uid)
            case Outcome.WORKER_DIED:
                self._worker_died(job)
            case Outcome.DEAD_LETTERED:
                ctx.metrics.count("dead_lettered")
                self._give_up(job, result.error)

    def _later(self, job: Job, error: str) -> None:
        """Its outputs met a full disk: drop what was half written, try again later."""
        ctx = self.ctx
        for partial in (ctx.root / "out" / job.sop_instance_uid).rglob(".*.partial"):
            partial.unlink(missing_ok=True)
        ctx.note_disk_full(OSError(error))
        ctx.metrics.count("disk_full_retries")
        ctx.store.retry_transcode(job.sop_instance_uid, time.time() + DISK_RETRY_SECONDS,
                                  f"disk full: {error}")
        log.warning("transcoding %s met a full disk (%s): trying again in %g s",
                    job.sop_instance_uid, error, DISK_RETRY_SECONDS)

    def _worker_died(self, job: Job) -> None:
        """A worker died with the job: it counts the death and goes back to the queue, or, at
        max_worker_deaths, fails with its source quarantined. Killed with the node (a signal to
        its process group): no death counted."""
        ctx, uid = self.ctx, job.sop_instance_uid
        if ctx.stopping.is_set():
            log.warning("the transcoding worker of %s ended with the node: it stays queued", uid)
            ctx.store.requeue(uid)
            return
        deaths = ctx.store.worker_died(uid)
        if deaths >= ctx.max_worker_deaths:
            self._give_up(job, f"worker died {deaths} times")
        else:
            log.warning("a transcoding worker died with %s in flight (death %d of %d): back in "
                        "the queue, to run alone", uid, deaths, ctx.max_worker_deaths)

    def _give_up(self, job: Job, reason: str) -> None:
        """Fail an instance for good: its source goes to quarantine beside the reason."""
        ctx, uid = self.ctx, job.sop_instance_uid
        try:
            where: Path | None = quarantine(ctx.spool, job.spool_path, reason, uid)
        except FileNotFoundError:  # moved there already by an earlier try
            where = None
        ctx.store.failed(uid, reason, quarantined=where)
        ctx.metrics.count("failed")
        log.error("instance %s failed: %s; its source is in %s", uid, reason,
                  where or "quarantine")
