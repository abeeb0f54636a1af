"""The C-STORE receiver: check, spool, fsync, commit, then acknowledge. No pixel decoding here.

`accept` is the whole policy for one incoming instance and runs without a network; the pynetdicom
handler in node.py only hands it the file pynetdicom wrote the instance into as it arrived
(chunked receive, in storage/incoming/). A bad instance gets a DICOM failure status and is
quarantined with its reason beside it; the node keeps serving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicomcr.dicom.uids import check_uid

from .store import JobStore

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


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


def _quarantine(spool: Spool, received: Path, reason: str, hint: str) -> None:
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in hint)[:80] or "instance"
    name = f"{safe}-{os.urandom(4).hex()}"
    spool.quarantine.mkdir(parents=True, exist_ok=True)
    (spool.quarantine / f"{name}.reason.txt").write_text(reason + "\n")
    _make_durable(received, spool.quarantine / f"{name}.dcm")


def _pixel_bytes(ds: pydicom.Dataset) -> int:
    """Length of the Pixel Data value without reading it (it may be hundreds of MB)."""
    element = ds.get_item("PixelData")
    length = getattr(element, "length", None)
    return int(length) if length is not None else len(ds.PixelData)


def accept(received: Path, *, sop_class_uid: str, sop_instance_uid: str, calling_ae: str,
           site: str, policy: str, spool: Spool, store: JobStore, max_bytes: int) -> int:
    """Check one received file (DICOM file format, as the peer encoded it) and make it durable.

    On success the file is moved into the spool and its job committed; on failure it is moved
    into quarantine beside its reason. Returns the C-STORE status to answer."""
    received = Path(received)
    size = received.stat().st_size
    if size > max_bytes:
        _quarantine(spool, received, f"{size} bytes, above the {max_bytes} byte limit",
                    sop_instance_uid)
        return OUT_OF_RESOURCES
    try:
        ds = pydicom.dcmread(received, defer_size=1024)
        uid = check_uid(str(ds.SOPInstanceUID), "SOP Instance UID")
        check_uid(str(ds.StudyInstanceUID), "Study Instance UID")
    except Exception as exc:  # any parse failure of a peer's bytes is that peer's error
        _quarantine(spool, received, f"cannot understand the dataset: {exc}", sop_instance_uid)
        return CANNOT_UNDERSTAND
    if str(ds.SOPClassUID) != sop_class_uid or uid != sop_instance_uid:
        _quarantine(spool, received, f"dataset SOP Class/Instance {ds.SOPClassUID}/{uid} differ "
                                     f"from the request's {sop_class_uid}/{sop_instance_uid}", uid)
        return DATASET_DOES_NOT_MATCH_SOP_CLASS
    if "PixelData" not in ds:
        _quarantine(spool, received, "no Pixel Data (7FE0,0010)", uid)
        return CANNOT_UNDERSTAND
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_compressed:
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * \
            int(ds.BitsAllocated) // 8 * int(ds.get("NumberOfFrames", 1) or 1)
        present = _pixel_bytes(ds)
        if present < expected:
            _quarantine(spool, received, f"Pixel Data holds {present} bytes, {expected} expected",
                        uid)
            return CANNOT_UNDERSTAND
    path = spool.spool / f"{uid}.dcm"  # a validated UID: digits and dots, no way out of spool/
    _make_durable(received, path)
    store.received(sop_instance_uid=uid, sop_class_uid=sop_class_uid,
                   study_uid=str(ds.StudyInstanceUID), calling_ae=calling_ae, site=site,
                   policy=policy, spool_path=path, size=size)
    return SUCCESS
