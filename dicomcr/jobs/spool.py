"""The spool and the quarantine: sources made durable before they are acknowledged, sources the
node refused or gave up on kept beside a file that says why, and sources released from there
for another try (`dicomcr retry`)."""

from __future__ import annotations

import os
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..outputs import move_durably
from .layout import Storage

REASON_SUFFIX = ".reason.txt"


def quarantine(storage: Storage, source: Path, reason: str, hint: str) -> Path:
    """Move `source` into quarantine/ beside a .reason.txt, durably; return where it went.

    On a full disk the error is raised and `source` stays where it was."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in hint)[:80] or "instance"
    name = f"{safe}-{os.urandom(4).hex()}"
    storage.quarantine.mkdir(parents=True, exist_ok=True)
    reason_file = storage.quarantine / f"{name}{REASON_SUFFIX}"
    try:
        reason_file.write_text(reason + "\n")
        move_durably(source, storage.quarantine / f"{name}.dcm")
    except OSError:
        reason_file.unlink(missing_ok=True)
        raise
    return storage.quarantine / f"{name}.dcm"


def reason_of(quarantined: Path) -> Path:
    """The file beside a quarantined source that says why it is there."""
    return quarantined.with_name(quarantined.name.removesuffix(".dcm") + REASON_SUFFIX)


@dataclass(frozen=True)
class Refusal:
    """A source refused at receive: answered with a failure status and never acknowledged (the
    sender still has it), kept in quarantine with its reason and no job."""

    path: Path
    reason: str


def refused(storage: Storage, kept: set[Path]) -> list[Refusal]:
    """The quarantined sources that are not the source of a failed job (`kept`), with why."""
    found = []
    for reason in sorted(storage.quarantine.glob(f"*{REASON_SUFFIX}")):
        source = reason.with_name(reason.name.removesuffix(REASON_SUFFIX) + ".dcm")
        if source not in kept:
            found.append(Refusal(source, reason.read_text().strip()))
    return found


def release(storage: Storage, quarantined: Path, sop_instance_uid: str) -> Path:
    """Move a quarantined source back into the spool for another try, its reason file dropped;
    where it is now."""
    back = storage.spooled(sop_instance_uid)
    move_durably(quarantined, back)
    reason_of(quarantined).unlink(missing_ok=True)
    return back


@dataclass
class UidLocks:
    """Locks by SOP Instance UID (striped: a few locks shared by all UIDs), so that what replaces
    an instance's files (a re-send made durable and recorded) and what deletes them (retention)
    never interleave for one UID, while other UIDs go on in parallel."""

    stripes: int = 64
    _locks: list[threading.Lock] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._locks = [threading.Lock() for _ in range(self.stripes)]

    def __call__(self, uid: str) -> threading.Lock:
        return self._locks[zlib.crc32(uid.encode()) % self.stripes]
