"""Retention (node.retention_days): the files of objects delivered long enough ago are deleted;
their rows stay as the record. Never an object not yet delivered, never a file outside the
node's storage folder."""

from __future__ import annotations

import contextlib
import time

from .changes import StateChanges
from .layout import Storage
from .reads import ReadModels
from .records import Job
from .spool import UidLocks
from .states import InstanceState, check


class Retention(StateChanges, ReadModels):
    """The store's side of retention: what may be deleted, and the record that it was."""

    def delivered_before(self, when: float, limit: int = 256) -> list[Job]:
        """Objects delivered (done) before `when` whose files are still kept, oldest first:
        what node.retention_days lets the node delete. Never anything not yet delivered."""
        return self._jobs(f"state=? AND updated_at < ? AND {self._purged}=0",
                          (InstanceState.DONE.value, when), order="updated_at", limit=limit)

    def purged(self, uid: str, delivered_before: float | None = None) -> bool:
        """Mark a delivered object's files deleted (its row stays as the record): only while it
        is still delivered, not yet purged and, with `delivered_before`, delivered before then
        (an image sent again meanwhile is not); whether it was."""
        check((InstanceState.DONE,), InstanceState.DONE)
        now = time.time()
        cutoff = now if delivered_before is None else delivered_before
        with self.sql() as db:
            return db.execute(
                f"UPDATE instances SET purged_at=? WHERE "
                f"sop_instance_uid=? AND state=? AND {self._purged}=0 AND updated_at <= ?",
                (now, uid, InstanceState.DONE.value, cutoff)).rowcount == 1


def purge_delivered(store: Retention, storage: Storage, older_than_seconds: float,
                    locks: UidLocks, limit: int = 256) -> int:
    """Delete the files (the received source and its outputs) of up to `limit` objects delivered
    more than `older_than_seconds` ago, and their outputs' folders left empty; how many. Each
    object is marked purged first, under its UID's lock (`locks`: the receiver's), so that an
    image sent again meanwhile keeps its new files."""
    root = storage.root.resolve()
    cutoff = time.time() - older_than_seconds
    purged = 0
    for job in store.delivered_before(cutoff, limit):
        with locks(job.uid):
            if not store.purged(job.uid, cutoff):
                continue
            for path in {job.spool_path, *job.outputs}:
                if path.resolve().is_relative_to(root):
                    path.unlink(missing_ok=True)
            outputs = storage.outputs_of(job.uid)
            for folder in [*sorted(outputs.glob("*/"), reverse=True), outputs]:
                with contextlib.suppress(OSError):  # out/<uid>/<cr>/ and out/<uid>/, if empty
                    folder.rmdir()
        purged += 1
    return purged
