"""The saliency captures of the operator page: which of the objects the node made are Secondary
Captures (their header read once, remembered by file and modification time), and small PNGs of
them, rendered from those SC files and kept under `Storage.thumbnails` (rendered again when the
SC is newer: a second inference rewrites it under the same UID). The browser gets the PNG, never
the DICOM object.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from dicomcr.jobs import Storage
from dicomcr.outputs import partial_name

THUMBNAIL_SIDE = 320  # pixels, the longer side: sharp at 160 CSS pixels on a HiDPI screen
REMEMBERED = 4096  # headers kept in memory (the last studies' derived objects, many times over)
HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "ImageLaterality",
               "Laterality", "InstanceNumber", "DerivationDescription"]


@dataclass(frozen=True)
class Capture:
    """One saliency SC the node made: what the page shows of it, and its file."""

    uid: str  # SOP Instance UID
    study_uid: str
    laterality: str  # L or R, as the SC says (Image Laterality, else the series' Laterality)
    number: int  # Instance Number: the order the node wrote them in
    description: str  # Derivation Description: the view, the probability, "not for diagnostic use"
    path: Path
    version: int  # the file's modification time (ns): a new version gets a new URL

    @property
    def url(self) -> str:
        """Where the page finds its thumbnail (services/web/page.py serves it)."""
        return f"/thumbnails/{self.study_uid}/{self.uid}.png?v={self.version}"


class Captures:
    """Which files are saliency SCs, each header read once per version of the file; thread-safe
    (the page's requests run in a thread pool)."""

    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._seen: OrderedDict[tuple[str, int, int], Capture | None] = OrderedDict()
        self._remembered = remembered
        self._lock = threading.Lock()

    def of(self, path: Path) -> Capture | None:
        """The capture in `path`, or None when it is something else (the SR) or gone."""
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return self._seen[key]
        found = _read_capture(path, stat.st_mtime_ns)
        with self._lock:
            self._seen[key] = found
            while len(self._seen) > self._remembered:
                self._seen.popitem(last=False)
        return found

    def in_study(self, storage: Storage, study_uid: str, sop_uid: str) -> Capture | None:
        """The capture `sop_uid` among the objects the node made for `study_uid` (both UIDs
        checked by the caller: they name a folder and nothing else), or None."""
        folder = storage.derived_of(study_uid)
        for path in sorted(folder.glob("*.dcm")):
            capture = self.of(path)
            if capture is not None and capture.uid == sop_uid:
                return capture
        return None


def _read_capture(path: Path, version: int) -> Capture | None:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except (OSError, pydicom.errors.InvalidDicomError, ValueError):
        return None
    if header.get("SOPClassUID") != SecondaryCaptureImageStorage:
        return None
    return Capture(str(header.SOPInstanceUID), str(header.get("StudyInstanceUID", "")),
                   str(header.get("ImageLaterality") or header.get("Laterality") or ""),
                   int(header.get("InstanceNumber") or 0),
                   str(header.get("DerivationDescription", "")), path, version)


def _eight_bit(pixels: np.ndarray, photometric: str) -> Image.Image:
    """An RGB or greyscale SC's pixels as an 8-bit PIL image."""
    if pixels.ndim == 3:
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    low, high = float(pixels.min()), float(pixels.max())
    grey = (pixels - low) / (high - low or 1.0) * 255
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey.astype(np.uint8), "L")


def thumbnail(storage: Storage, capture: Capture) -> Path:
    """The PNG of `capture` under storage/thumbnails/, rendered when missing or older than the
    SC; written under a temporary name and renamed, so that a reader never sees half of one."""
    target = storage.thumbnail_of(capture.uid)
    try:
        if target.stat().st_mtime_ns >= capture.version:
            return target
    except FileNotFoundError:
        pass
    dataset = pydicom.dcmread(capture.path)
    image = _eight_bit(dataset.pixel_array, str(dataset.get("PhotometricInterpretation", "")))
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    encoded = io.BytesIO()
    image.save(encoded, "PNG")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(target)
    partial.write_bytes(encoded.getvalue())
    os.replace(partial, target)
    return target
