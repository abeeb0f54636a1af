"""Retention (node.retention_days): the files of objects delivered long enough ago are deleted;
their rows stay as the record. Never an object not yet delivered, never a file outside the
node's storage folder."""

from __future__ import annotations

import contextlib
import time

from .changes import INSTANCES, StateChanges
from .layout import Storage
from .reads import ReadModels
from .records import Job
from .states import InstanceState


class Retention(StateChanges, ReadModels):
    """The store's side of retention: what may be deleted, and the record that it was."""

    def delivered_before(self, when: float, limit: int = 256) -> list[Job]:
        """Objects delivered (done) before `when` whose files are still kept, oldest first:
        what node.retention_days lets the node delete. Never anything not yet delivered."""
        return self._jobs(f"state=? AND updated_at < ? AND {self._purged}=0",
                          (InstanceState.DONE.value, when), order="updated_at", limit=limit)

    def purged(self, uid: str) -> bool:
        """The files of a delivered object were deleted; its row stays as the record."""
        return self.move(INSTANCES, uid, InstanceState.DONE, InstanceState.DONE,
                         purged_at=time.time())


def purge_delivered(store: Retention, storage: Storage, older_than_seconds: float,
                    limit: int = 256) -> int:
    """Delete the files (the received source and its outputs) of up to `limit` objects delivered
    more than `older_than_seconds` ago, and the folders they leave empty; how many objects."""
    root = storage.root.resolve()
    jobs = store.delivered_before(time.time() - older_than_seconds, limit)
    for job in jobs:
        for path in {job.spool_path, *job.outputs}:
            if path.resolve().is_relative_to(root):
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # out/<uid>/<cr>/ and out/<uid>/, if empty
                    path.parent.rmdir()
                    path.parent.parent.rmdir()
        store.purged(job.sop_instance_uid)
    return len(jobs)
