"""The node's durable job store and its storage folder: the only SQL of the project.

    layout.py     the storage folder (jobs.sqlite, incoming/, spool/, quarantine/, out/,
                  derived/, results/) and the disk reserve
    states.py     the states of instances and studies, and the one table of allowed changes
    database.py   the SQLite file: schema, migrations, StoreError / StoreFull
    changes.py    every state change, through the table
    reads.py      the work that is due, and the read models (counts, failures, backlog)
    retention.py  what node.retention_days may delete
    store.py      JobStore, all of the above over one connection
    spool.py      sources made durable, quarantined with a reason, released for a retry
    admin.py      `dicomcr status` and `dicomcr retry`

Instances are of two kinds (`ObjectKind`): images received from a modality or a PACS, and the
objects the node derives itself (saliency SCs and the SR), which are forwarded, never transcoded.
An instance goes received (in the spool, acknowledged) -> queued (handed to a worker, a local
pool or a broker) -> transcoded (outputs written) -> done (the destination answered Success), or
to failed with the reason. A failure to forward leaves it transcoded with a later retry time, and
so does a full disk for a transcode (received, retried later). A job in flight when its worker
died counts the death and goes back to the queue; what a dead node had queued goes back when
the next one starts (`requeue_in_flight`). Rows are keyed by SOP Instance UID, so a re-sent
instance replaces its row and every step can be repeated without duplicates.

Studies have their own rows for inference: waiting (an image arrived since the last inference)
-> queued -> inferred (its SCs and SR are derived instances, forwarded like any other) or failed;
skipped when its site has no model. A new image puts a study back to waiting; the derived
objects' UIDs are functions of their sources, so a second inference replaces the first.
"""

from .changes import INSTANCES, STUDIES, Table
from .database import StoreError, StoreFull
from .layout import STORE_FILE, DiskReserve, DiskSpace, Storage
from .records import Backlog, Counts, FailedWhat, Failure, Job, StudyJob, queue_depth
from .states import (
    PENDING,
    TRANSITIONS,
    ForbiddenTransition,
    InstanceState,
    ObjectKind,
    StudyState,
)
from .store import JobStore

__all__ = [
    "INSTANCES", "PENDING", "STORE_FILE", "STUDIES", "TRANSITIONS", "Backlog", "Counts",
    "DiskReserve", "DiskSpace", "FailedWhat", "Failure", "ForbiddenTransition", "InstanceState",
    "Job", "JobStore", "ObjectKind", "Storage", "StoreError", "StoreFull", "StudyJob",
    "StudyState", "Table", "queue_depth",
]
