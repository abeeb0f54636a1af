"""The C-STORE receiver: check, spool, fsync, commit, then acknowledge. No pixel decoding here.

`accept` is the whole policy for one incoming instance and runs without a network; the pynetdicom
handler (stages/receive.py) only hands it the file pynetdicom wrote the instance into as it arrived
(chunked receive, in storage/incoming/). A bad instance gets a DICOM failure status and is
quarantined with its reason beside it; the node keeps serving. Below the disk reserve, or on a
full disk, an instance is answered Out of Resources and dropped: nothing is wrong with it, the
peer may send it again later.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pydicom
from pydicom.pixels.utils import get_expected_length

from dicomcr.config import Policy
from dicomcr.dicom.uids import check_uid
from dicomcr.jobs import DiskReserve, JobStore, Storage
from dicomcr.jobs.spool import UidLocks, quarantine
from dicomcr.outputs import is_disk_full, move_durably

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


class Receipt(Enum):
    """What became of a received instance."""

    STORED = "stored"  # durable and recorded: acknowledged with Success
    REFUSED = "refused"  # bad input: a failure status, quarantined with the reason
    NO_SPACE = "no_space"  # the disk is full or below the reserve: Out of Resources, dropped


@dataclass(frozen=True)
class Verdict:
    """The C-STORE status to answer, what became of the instance, and why (for the log)."""

    status: int
    receipt: Receipt
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.receipt is Receipt.STORED


STORED = Verdict(SUCCESS, Receipt.STORED)


def no_space(reason: str) -> Verdict:
    """Out of Resources: nothing is wrong with the instance, the peer may send it again later."""
    return Verdict(OUT_OF_RESOURCES, Receipt.NO_SPACE, reason)


def write_or_give_back(fd: int, data: bytes | memoryview) -> OSError | None:
    """Write all of `data` to the file `fd` as an instance arrives; on a full disk, truncate the
    file (the space goes back at once) and return the error, for the caller to drop the rest and
    answer Out of Resources; any other error is raised."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        os.ftruncate(fd, 0)
        return exc
    return None


def _refuse(storage: Storage, received: Path, status: int, reason: str, hint: str) -> Verdict:
    """Quarantine a bad instance with its reason (on a full disk: drop it); the verdict."""
    try:
        quarantine(storage, received, reason, hint)
    except OSError as exc:
        if not is_disk_full(exc):
            raise  # the disk is not full: something is wrong with the node, say so
        received.unlink(missing_ok=True)
    return Verdict(status, Receipt.REFUSED, reason)


def _pixel_bytes(ds: pydicom.Dataset, size: int) -> int:
    """Length of the Pixel Data value without reading it (it may be hundreds of MB): the
    element's length as parsed, its value left deferred on disk, but no more than the file holds
    after the value's start (a dataset cut inside its pixels declares the full length)."""
    element = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(element, "length", None)
    if length is None:
        return len(ds.PixelData)
    start = getattr(element, "value_tell", None)
    return int(length) if start is None else max(0, min(int(length), size - int(start)))


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
           site: str, policy: Policy, storage: Storage, store: JobStore, max_bytes: int,
           disk: DiskReserve | None = None, skipped: str | None = None,
           locks: UidLocks | None = None) -> Verdict:
    """Check one received file (DICOM file format, as the peer encoded it) and make it durable.

    On success the file is moved into the spool and its job committed; on failure it is moved
    into quarantine beside its reason, or deleted when the disk is the problem (`disk`: the
    reserve to keep; the file is already on disk, so what is left must still cover the reserve).
    `skipped`: why the study has no inference to wait for (its site has no model), if so;
    `locks`: the node's locks by UID, held while the file replaces an earlier one's and is
    recorded (retention deletes under the same lock).
    Returns the status to answer and why."""
    received = Path(received)
    size = received.stat().st_size
    space = disk.space() if disk is not None else None
    if space is not None and space.low:
        received.unlink()
        return no_space(f"with this instance, {space}")
    if size > max_bytes:
        return _refuse(storage, received, OUT_OF_RESOURCES,
                       f"{size} bytes, above the {max_bytes} byte limit", sop_instance_uid)
    try:
        ds = pydicom.dcmread(received, defer_size=1024)
        uid = check_uid(str(ds.SOPInstanceUID), "SOP Instance UID")
        check_uid(str(ds.StudyInstanceUID), "Study Instance UID")
        sop_class = check_uid(str(ds.get("SOPClassUID", "")), "SOP Class UID")
    except Exception as exc:  # any parse failure of a peer's bytes is that peer's error
        return _refuse(storage, received, CANNOT_UNDERSTAND,
                       f"cannot understand the dataset: {exc}", sop_instance_uid)
    if sop_class != sop_class_uid or uid != sop_instance_uid:
        return _refuse(storage, received, DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       f"dataset SOP Class/Instance {sop_class}/{uid} differ from the "
                       f"request's {sop_class_uid}/{sop_instance_uid}", uid)
    if "PixelData" not in ds:
        return _refuse(storage, received, CANNOT_UNDERSTAND, "no Pixel Data (7FE0,0010)", uid)
    try:
        problem = image_pixel_problem(ds)
    except (TypeError, ValueError) as exc:  # a value that is not a number where one must be
        problem = f"Image Pixel module: {exc}"
    if problem:
        return _refuse(storage, received, DATASET_DOES_NOT_MATCH_SOP_CLASS, problem, uid)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_encapsulated:
        expected = get_expected_length(ds, "bytes")
        present = _pixel_bytes(ds, size)
        if present != expected + expected % 2:  # an odd length is padded to even
            return _refuse(storage, received, CANNOT_UNDERSTAND,
                           f"Pixel Data holds {present} bytes, {expected + expected % 2} expected "
                           "(Rows x Columns x Samples x Frames x BitsAllocated / 8)", uid)
    path = storage.spooled(uid)  # a validated UID: digits and dots, no way out of spool/
    with locks(uid) if locks is not None else contextlib.nullcontext():  # no node: no one to wait
        return _store(received, path, store, uid=uid, sop_class_uid=sop_class_uid,
                      study_uid=str(ds.StudyInstanceUID), calling_ae=calling_ae, site=site,
                      policy=policy, size=size, skipped=skipped)


def _store(received: Path, path: Path, store: JobStore, *, uid: str, sop_class_uid: str,
           study_uid: str, calling_ae: str, site: str, policy: Policy, size: int,
           skipped: str | None) -> Verdict:
    """Make the checked file durable at `path` and record it; Out of Resources on a full disk."""
    replaces = path.exists()  # a re-send: the earlier file is acknowledged, never delete it
    try:
        move_durably(received, path)
        store.received(sop_instance_uid=uid, sop_class_uid=sop_class_uid, study_uid=study_uid,
                       calling_ae=calling_ae, site=site, policy=policy, spool_path=path,
                       size=size, skipped=skipped)
    except OSError as exc:  # the job store's StoreFull is one
        if not is_disk_full(exc):
            raise
        received.unlink(missing_ok=True)
        if not replaces:
            path.unlink(missing_ok=True)
        return no_space(f"disk full while storing: {exc}")
    return STORED
