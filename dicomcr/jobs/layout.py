"""The node's storage folder: where everything it keeps lies, named once, and the free space it
keeps in reserve.

    <storage>/jobs.sqlite              the job store
    <storage>/incoming/                datasets as they arrive, before their checks
    <storage>/spool/<SOP UID>.dcm      received and acknowledged sources
    <storage>/quarantine/<name>.dcm    refused or given-up sources, each beside <name>.reason.txt
    <storage>/out/<SOP UID>/           the transcoded images of one source
    <storage>/derived/<Study UID>/     the saliency SCs and SR the node made for a study
    <storage>/results/<task id>.json   results left by remote workers (queue: amqp://)
    <storage>/thumbnails/<SOP UID>.png small renderings of the node's saliency SCs (the web page)

Workers on other machines see the same folder at the same path (shared storage), so every path
the node hands out comes from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STORE_FILE = "jobs.sqlite"


@dataclass(frozen=True)
class Storage:
    """The layout of one node's storage folder (`node.storage`)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def store(self) -> Path:
        """The job store's SQLite file."""
        return self.root / STORE_FILE

    @property
    def incoming(self) -> Path:
        """Where the network layer writes instances as they arrive (same file system as the
        spool, so that the rename into it moves no bytes)."""
        return self.root / "incoming"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def outputs(self) -> Path:
        return self.root / "out"

    @property
    def derived(self) -> Path:
        return self.root / "derived"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def thumbnails(self) -> Path:
        return self.root / "thumbnails"

    def thumbnail_of(self, sop_instance_uid: str) -> Path:
        """Where the operator page keeps a small PNG of one SC the node made."""
        return self.thumbnails / f"{sop_instance_uid}.png"

    def spooled(self, sop_instance_uid: str) -> Path:
        """Where an acknowledged source is kept (the UID was checked: digits and dots)."""
        return self.spool / f"{sop_instance_uid}.dcm"

    def outputs_of(self, sop_instance_uid: str) -> Path:
        """The folder of the transcoded images of one source."""
        return self.outputs / sop_instance_uid

    def derived_of(self, study_uid: str) -> Path:
        """The folder of the objects the node made for one study."""
        return self.derived / study_uid

    def result_of(self, task_id: str) -> Path:
        """Where a remote worker leaves the result of one task."""
        return self.results / f"{task_id}.json"


@dataclass(frozen=True)
class DiskSpace:
    """Free space in the storage folder against the reserve the node keeps."""

    free_bytes: int
    reserve_bytes: int

    @property
    def low(self) -> bool:
        """Below the reserve: new instances are answered Out of Resources."""
        return self.free_bytes < self.reserve_bytes

    def __str__(self) -> str:
        return (f"{self.free_bytes / 2**20:.0f} MiB free, below the "
                f"{self.reserve_bytes / 2**20:.0f} MiB reserve")


@dataclass(frozen=True)
class DiskReserve:
    """The reserve of free space kept in `folder` (node.disk_reserve_mb); 0 checks nothing."""

    folder: Path
    reserve_bytes: int

    def space(self) -> DiskSpace:
        stat = os.statvfs(self.folder)
        return DiskSpace(stat.f_bavail * stat.f_frsize, self.reserve_bytes)
