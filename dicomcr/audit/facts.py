"""What one DICOM file says about its compression, and what it breaks of the DICOM rules.

`read_facts` reads the header and measures the achieved CR from the stored bytes (the paper's
definition: 16-bit uncompressed size over the stored pixel data), without decoding. `rule_breaks`
lists what PS3.3 C.7.6.1.1.5 (Lossy Image Compression) and the derived-image rules forbid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.encaps import generate_fragments

from ..dicom.source import LOSSY_SYNTAXES, InputError, read_dicom


class UnreadableFile(ValueError):
    """A file the audit cannot read; the message says why."""


@dataclass(frozen=True)
class ImageFacts:
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    transfer_syntax: str
    lossy_flag: str  # (0028,2110): "01", "00" or "" when absent
    ratios: tuple[float, ...]  # (0028,2112), the whole history
    methods: tuple[str, ...]  # (0028,2114)
    image_type: tuple[str, ...]
    achieved_cr: float
    institution: str
    has_source_reference: bool
    manufacturer: str = ""
    rows: int = 0
    columns: int = 0
    pixel_spacing_mm: float | None = None  # (0028,0030), else (0018,1164); None when neither

    @property
    def lossy(self) -> bool:
        return self.lossy_flag == "01" or self.transfer_syntax in LOSSY_SYNTAXES


def _values(element) -> tuple[str, ...]:
    if element is None or element.value in (None, ""):
        return ()
    value = element.value
    return tuple(str(v) for v in value) if isinstance(value, list | tuple | pydicom.multival.MultiValue) \
        else (str(value),)


def _spacing(ds: pydicom.Dataset) -> float | None:
    """The column spacing in mm (Pixel Spacing, else Imager Pixel Spacing); None when absent or
    not a positive number."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _values(ds[keyword]) if keyword in ds else ()
        try:
            spacing = float(values[-1]) if values else 0.0
        except ValueError:
            continue
        if spacing > 0:
            return spacing
    return None


def read_facts(path: Path) -> ImageFacts:
    """The compression facts of one image file; UnreadableFile when it is not one."""
    try:
        ds = read_dicom(path)
    except InputError as exc:
        raise UnreadableFile(str(exc)) from exc
    if "PixelData" not in ds:
        raise UnreadableFile("no Pixel Data")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        syntax = str(ds.file_meta.TransferSyntaxUID)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnreadableFile(f"incomplete image header ({exc})") from exc
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        stored = sum(len(f) for f in generate_fragments(ds.PixelData))
    else:
        stored = len(ds.PixelData)
    if stored == 0:
        raise UnreadableFile("empty Pixel Data")
    uncompressed = rows * columns * samples * frames * 2  # the paper's 16-bit reference
    try:
        ratios = tuple(float(v) for v in _values(ds["LossyImageCompressionRatio"])) \
            if "LossyImageCompressionRatio" in ds else ()
    except ValueError as exc:
        raise UnreadableFile(f"Lossy Image Compression Ratio is not numeric ({exc})") from exc
    methods = _values(ds["LossyImageCompressionMethod"]) if "LossyImageCompressionMethod" in ds \
        else ()
    return ImageFacts(
        path=Path(path), sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")), study_uid=str(ds.get("StudyInstanceUID", "")),
        transfer_syntax=syntax, lossy_flag=str(ds.get("LossyImageCompression", "") or ""),
        ratios=ratios, methods=methods,
        image_type=tuple(str(v) for v in ds.get("ImageType", [])),
        achieved_cr=uncompressed / stored, institution=str(ds.get("InstitutionName", "") or ""),
        has_source_reference="SourceImageSequence" in ds,
        manufacturer=str(ds.get("Manufacturer", "") or ""), rows=rows, columns=columns,
        pixel_spacing_mm=_spacing(ds))


def rule_breaks(facts: ImageFacts, original_uids: set[str]) -> list[str]:
    """What this image breaks of the rules for lossy images. `original_uids`: the SOP Instance UIDs
    of the audited images that were never lossy compressed."""
    found = []
    if facts.transfer_syntax in LOSSY_SYNTAXES and facts.lossy_flag != "01":
        found.append(f"lossy transfer syntax {facts.transfer_syntax} without Lossy Image "
                     "Compression (0028,2110) = 01")
    if (facts.ratios or facts.methods) and facts.lossy_flag != "01":
        found.append("a lossy history (0028,2112/2114) without Lossy Image Compression "
                     "(0028,2110) = 01")
    if facts.lossy_flag == "01" and not facts.ratios:
        found.append("lossy, but no Lossy Image Compression Ratio (0028,2112)")
    if facts.lossy_flag == "01" and not facts.methods:
        found.append("lossy, but no Lossy Image Compression Method (0028,2114)")
    if facts.ratios and facts.methods and len(facts.ratios) != len(facts.methods):
        found.append(f"{len(facts.ratios)} ratio(s) but {len(facts.methods)} method(s) in the "
                     "lossy history")
    if facts.lossy and facts.sop_instance_uid in original_uids:
        found.append("a lossy image that kept its original SOP Instance UID")
    if facts.lossy and facts.image_type[:1] == ("ORIGINAL",):
        found.append("a lossy image still typed ORIGINAL (it is a derived image)")
    return found
