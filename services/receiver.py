"""The C-STORE receiver: check, spool, fsync, commit, then acknowledge. No pixel decoding here.

`accept` is the whole policy for one incoming instance and runs without a network; the pynetdicom
handler in node.py only hands it the bytes. A bad instance gets a DICOM failure status and is
quarantined with its reason beside it; the node keeps serving.
"""

from __future__ import annotations

import io
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


def _durable_write(path: Path, data: bytes) -> None:
    """Write, fsync the file, rename into place, fsync the folder: on disk before we say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _quarantine(spool: Spool, data: bytes, reason: str, hint: str) -> None:
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in hint)[:80] or "instance"
    name = f"{safe}-{os.urandom(4).hex()}"
    _durable_write(spool.quarantine / f"{name}.dcm", data)
    (spool.quarantine / f"{name}.reason.txt").write_text(reason + "\n")


def accept(data: bytes, *, sop_class_uid: str, sop_instance_uid: str, calling_ae: str,
           site: str, policy: str, spool: Spool, store: JobStore, max_bytes: int) -> int:
    """Check one encoded instance (file format, meta included) and make it durable; a status."""
    if len(data) > max_bytes:
        _quarantine(spool, data[:0], f"{len(data)} bytes, above the {max_bytes} byte limit",
                    sop_instance_uid)
        return OUT_OF_RESOURCES
    try:
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024)
        uid = check_uid(str(ds.SOPInstanceUID), "SOP Instance UID")
        check_uid(str(ds.StudyInstanceUID), "Study Instance UID")
    except Exception as exc:  # any parse failure of a peer's bytes is that peer's error
        _quarantine(spool, data, f"cannot understand the dataset: {exc}", sop_instance_uid)
        return CANNOT_UNDERSTAND
    if str(ds.SOPClassUID) != sop_class_uid or uid != sop_instance_uid:
        _quarantine(spool, data, f"dataset SOP Class/Instance {ds.SOPClassUID}/{uid} differ "
                                 f"from the request's {sop_class_uid}/{sop_instance_uid}", uid)
        return DATASET_DOES_NOT_MATCH_SOP_CLASS
    if "PixelData" not in ds:
        _quarantine(spool, data, "no Pixel Data (7FE0,0010)", uid)
        return CANNOT_UNDERSTAND
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_compressed:
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * \
            int(ds.BitsAllocated) // 8 * int(ds.get("NumberOfFrames", 1) or 1)
        present = len(ds.PixelData)
        if present < expected:
            _quarantine(spool, data, f"Pixel Data holds {present} bytes, {expected} expected", uid)
            return CANNOT_UNDERSTAND
    path = spool.spool / f"{uid}.dcm"  # a validated UID: digits and dots, no way out of spool/
    _durable_write(path, data)
    store.received(sop_instance_uid=uid, sop_class_uid=sop_class_uid,
                   study_uid=str(ds.StudyInstanceUID), calling_ae=calling_ae, site=site,
                   policy=policy, spool_path=path, size=len(data))
    return SUCCESS
