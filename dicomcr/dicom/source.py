"""Reading an incoming image: checked header, decoded pixels, a clear error for every bad input.

Every common transfer syntax decodes through pydicom and its pylibjpeg plugins: native (implicit
and explicit little endian), deflate, RLE, JPEG lossless, JPEG-LS, JPEG 2000 and HTJ2K.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

LOSSY_SYNTAXES = {  # transfer syntaxes whose encoders are lossy or usually used lossy
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
}
MAX_PIXELS = 1 << 28  # 268 M pixels: larger than any mammography detector by far


class InputError(ValueError):
    """An input file that cannot be transcoded; the message says why."""


@dataclass
class SourceImage:
    """A single-frame monochrome image and its dataset (header only: Pixel Data is released)."""

    path: Path
    dataset: Dataset
    pixels: np.ndarray

    @property
    def bits_stored(self) -> int:
        return int(self.dataset.BitsStored)

    @property
    def bits_allocated(self) -> int:
        return int(self.dataset.BitsAllocated)

    @property
    def lossy(self) -> bool:
        """Whether this image already went through lossy compression (header or syntax says so)."""
        flag = self.dataset.get("LossyImageCompression")
        if flag is not None:
            return str(flag) == "01"
        return str(self.dataset.file_meta.get("TransferSyntaxUID", "")) in LOSSY_SYNTAXES


def _check_header(ds: Dataset) -> None:
    if "PixelData" not in ds:
        raise InputError("no Pixel Data (7FE0,0010)")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel",
                    "PhotometricInterpretation", "SOPInstanceUID", "SOPClassUID"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            raise InputError(f"missing {keyword}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1 or rows * cols > MAX_PIXELS:
        raise InputError(f"absurd image size {rows} x {cols}")
    if int(ds.SamplesPerPixel) != 1 or ds.PhotometricInterpretation not in ("MONOCHROME1",
                                                                            "MONOCHROME2"):
        raise InputError(f"only monochrome images are transcoded, this one is "
                         f"{ds.PhotometricInterpretation} with {ds.SamplesPerPixel} samples")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InputError("multi-frame images are not transcoded")
    if int(ds.BitsAllocated) not in (8, 16) or not 1 <= int(ds.BitsStored) <= int(ds.BitsAllocated):
        raise InputError(f"unsupported BitsAllocated {ds.BitsAllocated} / BitsStored {ds.BitsStored}")
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is not None and not ts.is_compressed:
        expected = rows * cols * int(ds.BitsAllocated) // 8
        got = len(ds.PixelData)
        if got < expected:
            raise InputError(f"Pixel Data holds {got} bytes, {expected} expected for "
                             f"{rows} x {cols} x {ds.BitsAllocated} bits")


def has_dicm_preamble(path: Path) -> bool:
    """Whether the file has the DICOM preamble: 128 bytes, then "DICM"."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: Path, **options: object) -> Dataset:
    """`pydicom.dcmread(path, **options)`, its failures as InputError in the user's words."""
    try:
        return pydicom.dcmread(path, **options)
    except InvalidDicomError as exc:
        if not has_dicm_preamble(path):
            raise InputError("not a DICOM file (no DICM preamble/header)") from exc
        raise InputError(f"malformed DICOM: {exc}") from exc
    except OSError as exc:
        raise InputError(f"cannot read it: {exc.strerror or exc}") from exc
    except EOFError as exc:
        raise InputError(f"truncated DICOM ({exc})") from exc
    except Exception as exc:  # pydicom raises many kinds on malformed element structure
        raise InputError(f"malformed DICOM: {type(exc).__name__}: {exc}") from exc


def read_source(path: Path) -> SourceImage:
    """Read, check and decode one DICOM image, or raise InputError saying what is wrong."""
    path = Path(path)
    ds = read_dicom(path)
    _check_header(ds)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # any decoder failure: truncated or corrupt codestreams and the like
        ts = ds.file_meta.get("TransferSyntaxUID")
        name = ts.name if ts is not None else "unknown transfer syntax"
        raise InputError(f"cannot decode Pixel Data ({name}): {exc}") from exc
    if pixels.shape != (int(ds.Rows), int(ds.Columns)):
        raise InputError(f"decoded shape {pixels.shape} differs from Rows x Columns")
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is not None and ts.is_compressed:
        # Entropy-coded data has no checksum: a corrupt codestream often decodes "successfully"
        # to values that BitsStored cannot hold. Native data may carry unused high bits, so only
        # decoded codestreams are checked.
        bits = int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if int(pixels.min()) < lo or int(pixels.max()) > hi:
            raise InputError(f"decoded values {int(pixels.min())}..{int(pixels.max())} do not fit "
                             f"{bits} bits stored: corrupt codestream")
    del ds.PixelData  # the decoded pixels hold the image; keep one copy of it in memory, not two
    return SourceImage(path, ds, pixels)
