"""The C-STORE receiver: check, spool, fsync, commit, then acknowledge. No pixel decoding here.

`accept` is the whole policy for one incoming instance and runs without a network; the pynetdicom
handler in node.py only hands it the file pynetdicom wrote the instance into as it arrived
(chunked receive, in storage/incoming/). A bad instance gets a DICOM failure status and is
quarantined with its reason beside it; the node keeps serving. Below the disk reserve, or on a
full disk, an instance is answered Out of Resources and dropped: nothing is wrong with it, the
peer may send it again later.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pydicom
from pydicom.pixels.utils import get_expected_length

from dicomcr.config import Policy
from dicomcr.dicom.uids import check_uid
from dicomcr.jobs import JobStore

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

# PS3.3 C.7.6.3.1.2: the Samples per Pixel each Photometric Interpretation has (retired ones too).
SAMPLES_OF_PHOTOMETRIC = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1,
    "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3, "YBR_PARTIAL_420": 3, "YBR_PARTIAL_422": 3,
    "YBR_ICT": 3, "YBR_RCT": 3, "XYB": 3, "HSV": 3, "ARGB": 4, "CMYK": 4,
}
# The Image Pixel module's type 1 attributes that the checks below read.
IMAGE_PIXEL_REQUIRED = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")


class Outcome(Enum):
    """What became of a received instance."""

    STORED = "stored"  # durable and recorded: acknowledged with Success
    REFUSED = "refused"  # bad input: a failure status, quarantined with the reason
    NO_SPACE = "no_space"  # the disk is full or below the reserve: Out of Resources, dropped


@dataclass(frozen=True)
class Verdict:
    """The C-STORE status to answer, what became of the instance, and why (for the log)."""

    status: int
    outcome: Outcome
    reason: str = ""


STORED = Verdict(SUCCESS, Outcome.STORED)


@dataclass(frozen=True)
class Spool:
    """Where received instances go: spool/<SOP Instance UID>.dcm and quarantine/<name>.dcm."""

    root: Path

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def incoming(self) -> Path:
        """Where the network layer writes instances as they arrive (same file system)."""
        return self.root / "incoming"


@dataclass(frozen=True)
class DiskSpace:
    """Free space in the storage folder against the reserve the node keeps."""

    free_bytes: int
    reserve_bytes: int

    @property
    def low(self) -> bool:
        """Below the reserve: new instances are answered Out of Resources."""
        return self.free_bytes < self.reserve_bytes


@dataclass(frozen=True)
class DiskReserve:
    """The reserve of free space kept in `folder` (node.disk_reserve_mb); 0 checks nothing."""

    folder: Path
    reserve_bytes: int

    def space(self) -> DiskSpace:
        stat = os.statvfs(self.folder)
        return DiskSpace(stat.f_bavail * stat.f_frsize, self.reserve_bytes)


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, says the disk (or the user's quota) is
    full: a retry later, not a failure. (pydicom re-raises a write error as a new OSError without
    its errno, from the original.)"""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, sqlite3.OperationalError) and (
                getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "database or disk is full" in str(exc)):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full_said_plainly(exc: BaseException) -> BaseException:
    """For a worker process to raise: a full disk as a plain OSError(ENOSPC), because the pool
    sends an exception to the node without the errors it was raised from; anything else as is."""
    if is_disk_full(exc) and not (isinstance(exc, OSError) and exc.errno is not None):
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({first})")
    return exc


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _make_durable(received: Path, destination: Path) -> None:
    """fsync the received file, rename it into place, fsync the folder: on disk before we say so.

    The received file is in the storage folder's incoming/ (same file system), so the rename
    moves no bytes."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(received, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(received, destination)
    _fsync_folder(destination.parent)


def quarantine(spool: Spool, source: Path, reason: str, hint: str) -> Path:
    """Move `source` into quarantine/ beside a .reason.txt, durably; return where it went.

    On a full disk the error is raised and `source` stays where it was."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in hint)[:80] or "instance"
    name = f"{safe}-{os.urandom(4).hex()}"
    spool.quarantine.mkdir(parents=True, exist_ok=True)
    try:
        (spool.quarantine / f"{name}.reason.txt").write_text(reason + "\n")
        _make_durable(source, spool.quarantine / f"{name}.dcm")
    except OSError:
        (spool.quarantine / f"{name}.reason.txt").unlink(missing_ok=True)
        raise
    return spool.quarantine / f"{name}.dcm"


def _refuse(spool: Spool, received: Path, status: int, reason: str, hint: str) -> Verdict:
    """Quarantine a bad instance with its reason (on a full disk: drop it); the verdict."""
    try:
        quarantine(spool, received, reason, hint)
    except OSError as exc:
        if not is_disk_full(exc):
            raise  # the disk is not full: something is wrong with the node, say so
        received.unlink(missing_ok=True)
    return Verdict(status, Outcome.REFUSED, reason)


def _pixel_bytes(ds: pydicom.Dataset) -> int:
    """Length of the Pixel Data value without reading it (it may be hundreds of MB)."""
    element = ds.get_item("PixelData")
    length = getattr(element, "length", None)
    return int(length) if length is not None else len(ds.PixelData)


def image_pixel_problem(ds: pydicom.Dataset) -> str | None:
    """What is inconsistent in the Image Pixel module (PS3.3 C.7.6.3), read without decoding;
    None when nothing is. The Pixel Data length is checked apart (it depends on the syntax)."""
    missing = [keyword for keyword in IMAGE_PIXEL_REQUIRED if ds.get(keyword) in (None, "")]
    if missing:
        return f"Image Pixel module: {', '.join(missing)} missing"
    rows, columns = int(ds.Rows), int(ds.Columns)
    allocated, stored, high = int(ds.BitsAllocated), int(ds.BitsStored), int(ds.HighBit)
    samples, photometric = int(ds.SamplesPerPixel), str(ds.PhotometricInterpretation).strip()
    if rows < 1 or columns < 1:
        return f"Image Pixel module: Rows {rows} and Columns {columns} must be at least 1"
    if allocated < 1 or (allocated != 1 and allocated % 8):
        return f"Image Pixel module: BitsAllocated {allocated} is neither 1 nor a multiple of 8"
    if not 1 <= stored <= allocated:
        return f"Image Pixel module: BitsStored {stored} is not within 1..BitsAllocated {allocated}"
    if high != stored - 1:
        return f"Image Pixel module: HighBit {high} is not BitsStored - 1 ({stored - 1})"
    if int(ds.PixelRepresentation) not in (0, 1):
        return f"Image Pixel module: PixelRepresentation {ds.PixelRepresentation} is not 0 or 1"
    expected_samples = SAMPLES_OF_PHOTOMETRIC.get(photometric)
    if expected_samples is None:
        return f"Image Pixel module: unknown PhotometricInterpretation {photometric!r}"
    if samples != expected_samples:
        return (f"Image Pixel module: SamplesPerPixel {samples} does not fit "
                f"PhotometricInterpretation {photometric} ({expected_samples})")
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) < 1:
        return f"Image Pixel module: NumberOfFrames {frames} is below 1"
    return None


def accept(received: Path, *, sop_class_uid: str, sop_instance_uid: str, calling_ae: str,
           site: str, policy: Policy, spool: Spool, store: JobStore, max_bytes: int,
           disk: DiskReserve | None = None) -> Verdict:
    """Check one received file (DICOM file format, as the peer encoded it) and make it durable.

    On success the file is moved into the spool and its job committed; on failure it is moved
    into quarantine beside its reason, or deleted when the disk is the problem (`disk`: the
    reserve to keep; the file is already on disk, so what is left must still cover the reserve).
    Returns the status to answer and why."""
    received = Path(received)
    size = received.stat().st_size
    space = disk.space() if disk is not None else None
    if space is not None and space.low:
        received.unlink()
        return Verdict(OUT_OF_RESOURCES, Outcome.NO_SPACE,
                       f"{space.free_bytes / 2**20:.0f} MiB free with this instance, below the "
                       f"{space.reserve_bytes / 2**20:.0f} MiB reserve")
    if size > max_bytes:
        return _refuse(spool, received, OUT_OF_RESOURCES,
                       f"{size} bytes, above the {max_bytes} byte limit", sop_instance_uid)
    try:
        ds = pydicom.dcmread(received, defer_size=1024)
        uid = check_uid(str(ds.SOPInstanceUID), "SOP Instance UID")
        check_uid(str(ds.StudyInstanceUID), "Study Instance UID")
    except Exception as exc:  # any parse failure of a peer's bytes is that peer's error
        return _refuse(spool, received, CANNOT_UNDERSTAND,
                       f"cannot understand the dataset: {exc}", sop_instance_uid)
    if str(ds.SOPClassUID) != sop_class_uid or uid != sop_instance_uid:
        return _refuse(spool, received, DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       f"dataset SOP Class/Instance {ds.SOPClassUID}/{uid} differ from the "
                       f"request's {sop_class_uid}/{sop_instance_uid}", uid)
    if "PixelData" not in ds:
        return _refuse(spool, received, CANNOT_UNDERSTAND, "no Pixel Data (7FE0,0010)", uid)
    try:
        problem = image_pixel_problem(ds)
    except (TypeError, ValueError) as exc:  # a value that is not a number where one must be
        problem = f"Image Pixel module: {exc}"
    if problem:
        return _refuse(spool, received, DATASET_DOES_NOT_MATCH_SOP_CLASS, problem, uid)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_encapsulated:
        expected = get_expected_length(ds, "bytes")
        present = _pixel_bytes(ds)
        if present != expected + expected % 2:  # an odd length is padded to even
            return _refuse(spool, received, CANNOT_UNDERSTAND,
                           f"Pixel Data holds {present} bytes, {expected + expected % 2} expected "
                           "(Rows x Columns x Samples x Frames x BitsAllocated / 8)", uid)
    path = spool.spool / f"{uid}.dcm"  # a validated UID: digits and dots, no way out of spool/
    replaces = path.exists()  # a re-send: the earlier file is acknowledged, never delete it
    try:
        _make_durable(received, path)
        store.received(sop_instance_uid=uid, sop_class_uid=sop_class_uid,
                       study_uid=str(ds.StudyInstanceUID), calling_ae=calling_ae, site=site,
                       policy=policy, spool_path=path, size=size)
    except (OSError, sqlite3.OperationalError) as exc:
        if not is_disk_full(exc):
            raise
        received.unlink(missing_ok=True)
        if not replaces:
            path.unlink(missing_ok=True)
        return Verdict(OUT_OF_RESOURCES, Outcome.NO_SPACE, f"disk full while storing: {exc}")
    return STORED
