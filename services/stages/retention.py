"""The retention stage (node.retention_days): every minute (or a quarter of the retention time,
if shorter), the files of objects delivered longer ago than that are deleted (dicomcr.jobs.
retention: never one not yet delivered, never a file outside the storage folder); the rows stay
as the record."""

from __future__ import annotations

from dicomcr.jobs.retention import purge_delivered

from .context import NodeContext

SWEEP_SECONDS = 60.0


class RetentionStage:
    """Deletes what node.retention_days no longer keeps; `step` is one sweep, then a sleep."""

    def __init__(self, ctx: NodeContext, days: float) -> None:
        self.ctx = ctx
        self.keep_seconds = days * 86400
        self.interval = min(SWEEP_SECONDS, self.keep_seconds / 4)

    def busy(self) -> bool:
        return False

    def step(self, accepting: bool) -> None:
        if not accepting:
            return
        while purged := purge_delivered(self.ctx.store, self.ctx.storage, self.keep_seconds,
                                         self.ctx.uid_locks):
            self.ctx.metrics.count("purged", purged)
            if self.ctx.stop.is_set():
                return
        self.ctx.stop.wait(self.interval)
