"""The transcode stage: acknowledged instances to the work queue at their site's policy, and their
outputs back into the job store (the shared handling of every outcome is in queued.py).

A pass-through site's instances need no worker: their source is their output. A task that runs
twice writes the same files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dicomcr.jobs import INSTANCES, InstanceState, Job
from dicomcr.jobs.spool import quarantine

from ..workqueue import TaskKind, TranscodeResult, TranscodeTask
from .context import Loop, NodeContext
from .queued import QueuedStage

log = logging.getLogger("dicomcr.node")


class TranscodeStage(QueuedStage):
    """Publishes what is to transcode and records the results; `step` is one round."""

    in_flight: dict[str, Job]
    kind, table, loop = TaskKind.TRANSCODE, INSTANCES, Loop.TRANSCODE
    worker = "a transcoding worker"

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.peak_rss_mb = 0.0  # the largest a worker process has been, for /metrics

    def _due(self, room: int) -> list[Job]:
        return self.ctx.store.to_transcode(room)

    def _next_due(self) -> float | None:
        return self.ctx.store.next_due(InstanceState.RECEIVED)

    def _publish_due(self, jobs: list[Job], room: int) -> None:
        ctx = self.ctx
        for job in jobs:
            if not job.policy.transcodes:  # pass-through: the source is the output
                ctx.store.transcoded(job.uid, [job.spool_path])
                ctx.metrics.count("transcoded")
                ctx.wake(Loop.INFER, Loop.FORWARD)
                continue
            task = TranscodeTask(job.uid, job.spool_path, ctx.storage.outputs_of(job.uid),
                                 job.policy)
            if not self._hand_out([job], task):
                return

    def _done(self, job: Job, result: TranscodeResult) -> None:
        ctx = self.ctx
        self.peak_rss_mb = max(self.peak_rss_mb, result.peak_rss_mb)
        ctx.store.transcoded(job.uid, list(result.outputs), result.achieved_cr)
        ctx.metrics.count("transcoded")
        ctx.metrics.observe("transcode", result.seconds)
        ctx.wake(Loop.INFER, Loop.FORWARD)

    def _drop_partial(self, job: Job) -> None:
        for partial in self.ctx.storage.outputs_of(job.uid).rglob(".*.partial"):
            partial.unlink(missing_ok=True)

    def _give_up(self, job: Job, reason: str, poison: bool = False) -> None:
        """Fail an instance for good. A poison job's source goes to quarantine beside the
        reason; the source of one the worker could not transcode stays in the spool."""
        ctx = self.ctx
        ctx.metrics.count("failed")
        ctx.wake(Loop.INFER)  # its study may be complete without it
        if not poison:
            ctx.store.failed(job.uid, reason)
            log.warning("instance %s not transcoded: %s", job.uid, reason)
            return
        try:
            where: Path | None = quarantine(ctx.storage, job.spool_path, reason, job.uid)
        except FileNotFoundError:  # moved there already by an earlier try
            where = None
        ctx.store.failed(job.uid, reason, quarantined=where)
        log.error("instance %s failed: %s; its source is in %s", job.uid, reason,
                  where or "quarantine")
