"""The derived image: what a PACS needs to know about a transcoded image (PS3.3 C.7.6.1.1.5).

A lossy image is a new image: new SOP Instance UID and a new Series Instance UID per CR, ImageType
DERIVED, Lossy Image Compression "01", the measured ratio appended to (0028,2112), "ISO_15444_1"
appended to (0028,2114), Derivation Description and Code, and a Source Image Sequence pointing at
the original (purpose: uncompressed or lossy compressed predecessor, CID 7202). Everything else is
carried over. The UIDs are pure functions of the source UIDs and the CR, so transcoding the same
image twice writes the same object (idempotent by SOP Instance UID).
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000, JPEG2000Lossless

from dicomcr import __version__

from ..codec.j2k import Encoded
from .mammography import Code
from .uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, derived_uid

UNCOMPRESSED_PREDECESSOR = Code("121320", "DCM", "Uncompressed predecessor")
LOSSY_PREDECESSOR = Code("121330", "DCM", "Lossy compressed predecessor")
LOSSY_COMPRESSION = Code("113040", "DCM", "Lossy Compression")
J2K_METHOD = "ISO_15444_1"


def cr_label(target_cr: float | None) -> str:
    """The name of an output series: cr20, cr11000, or lossless."""
    return "lossless" if target_cr is None else f"cr{target_cr:g}"


def _ds_value(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    text = f"{value:.2f}" if value < 1e6 else f"{value:.6g}"
    return text[:16]


def _multi(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return []
    value = ds[keyword].value
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return [str(value)]
    return [str(v) for v in value]


def derive(source: Dataset, encoded: Encoded, source_lossy: bool) -> Dataset:
    """The transcoded dataset: `source` with `encoded` as its Pixel Data and the bookkeeping."""
    ds = copy.deepcopy(source)
    if "PixelData" in ds:
        del ds.PixelData
    lossy = not encoded.lossless
    syntax = JPEG2000 if lossy else JPEG2000Lossless
    label = cr_label(encoded.target_cr)

    if lossy:
        ds.SOPInstanceUID = derived_uid("dicomcr-transcode", source.SOPInstanceUID, label)
        ds.SeriesInstanceUID = derived_uid("dicomcr-transcode", source.SeriesInstanceUID, label)
        description = str(source.get("SeriesDescription", "")).strip()
        ds.SeriesDescription = f"{description} JPEG 2000 CR {encoded.target_cr:g}".strip()[-64:]
        image_type = [str(v) for v in source.get("ImageType", ["ORIGINAL", "PRIMARY"])]
        image_type = [*image_type, "PRIMARY"][: max(len(image_type), 2)]
        image_type[0] = "DERIVED"
        ds.ImageType = image_type
        ds.LossyImageCompression = "01"
        ratios = _multi(source, "LossyImageCompressionRatio")
        methods = _multi(source, "LossyImageCompressionMethod")
        ds.LossyImageCompressionRatio = [*ratios, _ds_value(encoded.achieved_cr)]
        ds.LossyImageCompressionMethod = [*methods, J2K_METHOD]
        quality = ("" if encoded.psnr_db is None  # measured only on request
                   else f", PSNR {encoded.psnr_db:.2f} dB (MAX 65535)")
        ds.DerivationDescription = (
            f"Lossy JPEG 2000 (ISO 15444-1, irreversible 9/7) at compression ratio "
            f"{encoded.achieved_cr:.2f}:1 (target {encoded.target_cr:g}){quality}, "
            f"by dicomcr {__version__}"
        )
        ds.DerivationCodeSequence = Sequence([LOSSY_COMPRESSION.item()])
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        purpose = LOSSY_PREDECESSOR if source_lossy else UNCOMPRESSED_PREDECESSOR
        reference.PurposeOfReferenceCodeSequence = Sequence([purpose.item()])
        ds.SourceImageSequence = Sequence([reference])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.PixelData = encapsulate([encoded.codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds
