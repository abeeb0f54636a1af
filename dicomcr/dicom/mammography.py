"""Digital Mammography X-Ray Image (PS3.3 A.26.1): one class, every argument named and checked.

Written the way highdicom writes its objects: the constructor validates everything and raises a
ValueError naming the argument the moment an input is wrong, so a file that exists is a valid one.
Coded arguments take highdicom's enums (photometric interpretation, laterality, patient sex), a
member or its string value, as highdicom's own constructors do.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np
from highdicom import LateralityValues, PatientSexValues, PhotometricInterpretationValues
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
)

from .uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, check_uid


@dataclass(frozen=True)
class Code:
    """A coded concept (value, scheme, meaning), as DICOM code sequences carry them."""

    value: str
    scheme: str
    meaning: str

    def item(self) -> Dataset:
        ds = Dataset()
        ds.CodeValue = self.value
        ds.CodingSchemeDesignator = self.scheme
        ds.CodeMeaning = self.meaning
        return ds


BREAST = Code("76752008", "SCT", "Breast")
VIEW_CODES: dict[str, Code] = {  # CID 4014 View for Mammography
    "CC": Code("399162004", "SCT", "cranio-caudal"),
    "MLO": Code("399368009", "SCT", "medio-lateral oblique"),
}
# Patient Orientation (row direction, column direction) for the layout this project writes: the
# chest wall against the left edge for left views, the right edge for right views; lateral up in CC.
PATIENT_ORIENTATION: dict[tuple[str, str], list[str]] = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
}
POSITIONER_ANGLE = {("L", "CC"): 0, ("R", "CC"): 0, ("L", "MLO"): 45, ("R", "MLO"): -45}
SOP_CLASS = {
    "FOR PRESENTATION": DigitalMammographyXRayImageStorageForPresentation,
    "FOR PROCESSING": DigitalMammographyXRayImageStorageForProcessing,
}


E = TypeVar("E", bound=Enum)

# A mammogram is grey: the photometric interpretations this writer accepts of highdicom's enum.
MONOCHROME = (PhotometricInterpretationValues.MONOCHROME1, PhotometricInterpretationValues.MONOCHROME2)


def _member(value: E | str, kind: type[E], name: str, allowed: tuple[E, ...] | None = None) -> E:
    """`value` (a member of `kind` or its string value) as a member of `allowed` (default: all of
    `kind`), or a ValueError naming the argument and the values it takes."""
    choices = allowed or tuple(kind)
    try:
        member = kind(value)
    except ValueError:
        member = None
    if member not in choices:
        names = ", ".join(repr(c.value) for c in choices)
        raise ValueError(f"{name} must be one of {names} (highdicom {kind.__name__}), got {value!r}")
    return member


def _da(value: dt.date, name: str) -> str:
    if not isinstance(value, dt.date):
        raise ValueError(f"{name} must be a datetime.date, got {type(value).__name__}")
    return value.strftime("%Y%m%d")


def _tm(value: dt.time, name: str) -> str:
    if not isinstance(value, dt.time):
        raise ValueError(f"{name} must be a datetime.time, got {type(value).__name__}")
    return value.strftime("%H%M%S")


def _text(value: str, name: str, max_len: int, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_len or "\\" in value:
        raise ValueError(f"{name} must be at most {max_len} characters without '\\': {value!r}")
    return value


class MammographyImage(Dataset):
    """A single-frame Digital Mammography X-Ray Image, For Presentation or For Processing.

    Pixels are stored uncompressed (Explicit VR Little Endian) in 16 bits allocated; the
    transcoder derives lossy images from it later.
    """

    def __init__(
        self,
        pixel_array: np.ndarray,
        *,
        photometric_interpretation: PhotometricInterpretationValues | str,
        bits_stored: int,
        pixel_spacing_mm: float,
        laterality: LateralityValues | str,
        view: str,
        patient_id: str,
        patient_name: str,
        patient_birth_date: dt.date,
        patient_sex: PatientSexValues | str | None,
        study_instance_uid: str,
        study_date: dt.date,
        study_time: dt.time,
        study_id: str,
        accession_number: str,
        series_instance_uid: str,
        series_number: int,
        sop_instance_uid: str,
        instance_number: int,
        manufacturer: str,
        manufacturer_model_name: str,
        detector_type: str,
        presentation_intent: str = "FOR PRESENTATION",
        window_center: float | None = None,
        window_width: float | None = None,
        voi_lut_function: str = "LINEAR",
        referring_physician_name: str = "",
        institution_name: str = "",
        patient_age_years: int | None = None,
        body_part_thickness_mm: float | None = None,
        compression_force_n: float | None = None,
        kvp: float | None = None,
        exposure_mas: float | None = None,
    ) -> None:
        super().__init__()
        pixels = np.asarray(pixel_array)
        if pixels.ndim != 2 or pixels.shape[0] < 2 or pixels.shape[1] < 2:
            raise ValueError(f"pixel_array must be a 2-D image, got shape {pixels.shape}")
        if pixels.dtype != np.uint16:
            raise ValueError(f"pixel_array must be uint16, got {pixels.dtype}")
        if not 8 <= bits_stored <= 16:
            raise ValueError(f"bits_stored must be 8..16 for 16 bits allocated, got {bits_stored}")
        if int(pixels.max()) >= 1 << bits_stored:
            raise ValueError(
                f"pixel_array holds {int(pixels.max())}, above the {bits_stored}-bit maximum"
            )
        photometric = _member(photometric_interpretation, PhotometricInterpretationValues,
                              "photometric_interpretation", MONOCHROME)
        monochrome2 = photometric is PhotometricInterpretationValues.MONOCHROME2
        if not pixel_spacing_mm > 0:
            raise ValueError(f"pixel_spacing_mm must be > 0, got {pixel_spacing_mm}")
        side = _member(laterality, LateralityValues, "laterality").value
        if view not in VIEW_CODES:
            raise ValueError(f"view must be one of {sorted(VIEW_CODES)}, got {view!r}")
        # Type 2: None writes it empty (unknown), as highdicom does.
        sex = "" if patient_sex is None else _member(patient_sex, PatientSexValues, "patient_sex").value
        if presentation_intent not in SOP_CLASS:
            raise ValueError(
                f"presentation_intent must be one of {sorted(SOP_CLASS)}, got {presentation_intent!r}"
            )
        for_presentation = presentation_intent == "FOR PRESENTATION"
        if for_presentation and (window_center is None or window_width is None):
            raise ValueError("window_center and window_width are required For Presentation")
        if window_width is not None and not window_width > 0:
            raise ValueError(f"window_width must be > 0, got {window_width}")
        if voi_lut_function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise ValueError(f"voi_lut_function must be LINEAR, LINEAR_EXACT or SIGMOID, "
                             f"got {voi_lut_function!r}")
        if detector_type not in ("DIRECT", "SCINTILLATOR", "STORAGE", "FILM"):
            raise ValueError(f"detector_type must be a DICOM defined term, got {detector_type!r}")
        for name, number in (("series_number", series_number), ("instance_number", instance_number)):
            if not isinstance(number, int) or number < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {number!r}")

        sop_class = SOP_CLASS[presentation_intent]
        sop_instance = check_uid(sop_instance_uid, "sop_instance_uid")

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_instance
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        self.file_meta = meta

        # SOP Common
        self.SpecificCharacterSet = "ISO_IR 100"
        self.SOPClassUID = sop_class
        self.SOPInstanceUID = sop_instance
        # Patient
        self.PatientName = _text(patient_name, "patient_name", 64)
        self.PatientID = _text(patient_id, "patient_id", 64)
        self.PatientBirthDate = _da(patient_birth_date, "patient_birth_date")
        self.PatientSex = sex
        # General Study, Patient Study
        self.StudyInstanceUID = check_uid(study_instance_uid, "study_instance_uid")
        self.StudyDate = _da(study_date, "study_date")
        self.StudyTime = _tm(study_time, "study_time")
        self.ReferringPhysicianName = _text(referring_physician_name, "referring_physician_name", 64)
        self.StudyID = _text(study_id, "study_id", 16)
        self.AccessionNumber = _text(accession_number, "accession_number", 16)
        self.StudyDescription = "MAMMOGRAPHY SCREENING"
        if patient_age_years is not None:
            if not 0 <= patient_age_years < 1000:
                raise ValueError(f"patient_age_years must be 0..999, got {patient_age_years}")
            self.PatientAge = f"{patient_age_years:03d}Y"
        # General Series, Mammography Series (DX Series)
        self.Modality = "MG"
        self.SeriesInstanceUID = check_uid(series_instance_uid, "series_instance_uid")
        self.SeriesNumber = series_number
        self.SeriesDescription = "SCREENING MAMMOGRAM"
        self.PresentationIntentType = presentation_intent
        # General Equipment
        self.Manufacturer = _text(manufacturer, "manufacturer", 64)
        self.ManufacturerModelName = _text(manufacturer_model_name, "manufacturer_model_name", 64)
        self.InstitutionName = _text(institution_name, "institution_name", 64)
        # General Image, General Acquisition
        self.InstanceNumber = instance_number
        self.PatientOrientation = PATIENT_ORIENTATION[(side, view)]
        self.ContentDate = self.StudyDate
        self.ContentTime = self.StudyTime
        self.AcquisitionDate = self.StudyDate
        self.AcquisitionTime = self.StudyTime
        self.ImageType = ["ORIGINAL", "PRIMARY", ""]
        self.BurnedInAnnotation = "NO"
        # DX Anatomy Imaged, Mammography Image
        self.ImageLaterality = side
        self.BodyPartExamined = "BREAST"
        self.AnatomicRegionSequence = Sequence([BREAST.item()])
        self.OrganExposed = "BREAST"
        view_item = VIEW_CODES[view].item()
        view_item.ViewModifierCodeSequence = Sequence([])
        self.ViewCodeSequence = Sequence([view_item])
        self.ViewPosition = view
        self.PositionerType = "MAMMOGRAPHIC"
        self.PositionerPrimaryAngle = POSITIONER_ANGLE[(side, view)]
        self.BreastImplantPresent = "NO"
        self.PartialView = "NO"
        # DX Image
        self.PixelIntensityRelationship = "LOG" if for_presentation else "LIN"
        self.PixelIntensityRelationshipSign = 1 if monochrome2 else -1
        self.RescaleIntercept = 0
        self.RescaleSlope = 1
        self.RescaleType = "US"
        self.PresentationLUTShape = "IDENTITY" if monochrome2 else "INVERSE"
        self.LossyImageCompression = "00"
        # DX Detector
        spacing = [round(float(pixel_spacing_mm), 6)] * 2
        self.DetectorType = detector_type
        self.ImagerPixelSpacing = spacing
        self.PixelSpacing = spacing
        self.PixelSpacingCalibrationType = "GEOMETRY"
        self.PixelSpacingCalibrationDescription = "Imager pixel spacing at the detector plane"
        # X-Ray Acquisition Dose, Generation (optional, realistic)
        if body_part_thickness_mm is not None:
            self.BodyPartThickness = round(float(body_part_thickness_mm), 1)
        if compression_force_n is not None:
            self.CompressionForce = round(float(compression_force_n), 1)
        if kvp is not None:
            self.KVP = round(float(kvp), 1)
        if exposure_mas is not None:
            self.ExposureInuAs = round(float(exposure_mas) * 1000)
        # Acquisition Context
        self.AcquisitionContextSequence = Sequence([])
        # VOI LUT
        if window_center is not None and window_width is not None:
            self.WindowCenter = round(float(window_center), 1)
            self.WindowWidth = round(float(window_width), 1)
            self.VOILUTFunction = voi_lut_function
        # Image Pixel
        self.SamplesPerPixel = 1
        self.PhotometricInterpretation = photometric.value
        self.Rows, self.Columns = int(pixels.shape[0]), int(pixels.shape[1])
        self.BitsAllocated = 16
        self.BitsStored = bits_stored
        self.HighBit = bits_stored - 1
        self.PixelRepresentation = 0
        self.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
