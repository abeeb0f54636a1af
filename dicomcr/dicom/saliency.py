"""The saliency Secondary Capture: one view with its Grad-CAM heat map, burned-in text, as DICOM.

Written the way highdicom writes its objects (it is a highdicom `SCImage`): every argument checked
at construction, a ValueError naming the wrong one. Same study as the view it explains, in a new
series; Source Image Sequence points at that view; Contributing Equipment names the model (IHE AI
Results style). The burned-in text says "AI saliency - not for diagnostic use".
"""

from __future__ import annotations

import numpy as np
from highdicom import ContributingEquipment
from highdicom.sc import SCImage
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .uids import check_uid

WARNING = "AI saliency - not for diagnostic use"
MAX_SIDE = 2048  # the rendering is for looking at, not for reading: larger views are halved
JET = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # colour table


def render(view: np.ndarray, heat: np.ndarray, lines: list[str], max_side: int = MAX_SIDE
           ) -> np.ndarray:
    """RGB uint8: the view (0..1, dense bright) in grey, the heat map (0..1) in colour over it
    where it matters (alpha grows with the heat), and `lines` of text burned in at the top."""
    if view.shape != heat.shape or view.ndim != 2:
        raise ValueError(f"view and heat map must be 2-D and of one shape, got {view.shape}, "
                         f"{heat.shape}")
    step = max(1, int(np.ceil(max(view.shape) / max_side)))
    grey = np.clip(view[::step, ::step], 0, 1).astype(np.float32)[..., None] * 255
    h = np.clip(heat[::step, ::step], 0, 1).astype(np.float32)
    colour = JET[(h * 255).astype(np.uint8)].astype(np.float32)
    alpha = (0.55 * np.clip((h - 0.2) / 0.8, 0, 1))[..., None]
    rgb = (1 - alpha) * grey + alpha * colour
    image = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    size = max(14, image.width // 45)
    font = ImageFont.load_default(size=size)
    y = size // 2
    for line in lines:
        box = draw.textbbox((size // 2, y), line, font=font)
        draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
        draw.text((size // 2, y), line, fill=(255, 255, 0), font=font)
        y = box[3] + size // 2
    return np.asarray(image)


class SaliencyCapture(SCImage):
    """One Secondary Capture image: `source`'s pixels with `heat` over them."""

    def __init__(self, *, source: Dataset, view: np.ndarray, heat: np.ndarray, probability: float,
                 model_name: str, model_version: str, trained_crs: list[float],
                 input_cr: str, series_instance_uid: str, sop_instance_uid: str,
                 instance_number: int, series_number: int = 9901) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        for name in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if name not in source:
                raise ValueError(f"the source image has no {name}")
        side = str(source.get("ImageLaterality", "") or source.get("Laterality", ""))
        position = str(source.get("ViewPosition", ""))
        if side not in ("L", "R"):
            raise ValueError(f"the source image has no laterality L or R (got {side!r})")
        if not model_name or not model_version:
            raise ValueError("model_name and model_version are required")
        check_uid(series_instance_uid, "series_instance_uid")
        check_uid(sop_instance_uid, "sop_instance_uid")
        crs = ", ".join(f"{c:g}" for c in trained_crs)
        breast = {"L": "left", "R": "right"}[side]
        pixels = render(view, heat, [
            WARNING,
            f"P(malignant), {breast} breast: {probability:.3f}",
            f"{side}{position} at CR {input_cr}; model {model_name} ({model_version}, trained at CR {crs})",
        ])
        spacing = source.get("ImagerPixelSpacing") or source.get("PixelSpacing")
        step = view.shape[0] / pixels.shape[0]
        equipment = ContributingEquipment(
            manufacturer="dicomcr", purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=model_name[:64], software_versions=model_version,
            contribution_description="Grad-CAM saliency of a malignancy classifier")
        super().__init__(
            pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT",
            study_instance_uid=str(source.StudyInstanceUID),
            series_instance_uid=series_instance_uid, series_number=series_number,
            sop_instance_uid=sop_instance_uid, instance_number=instance_number,
            manufacturer="dicomcr",
            patient_id=str(source.get("PatientID", "")),
            patient_name=source.get("PatientName", ""),
            patient_birth_date=str(source.get("PatientBirthDate", "")) or None,
            patient_sex=str(source.get("PatientSex", "")) or None,
            accession_number=str(source.get("AccessionNumber", "")) or None,
            study_id=str(source.get("StudyID", "")) or None,
            study_date=str(source.get("StudyDate", "")) or None,
            study_time=str(source.get("StudyTime", "")) or None,
            referring_physician_name=source.get("ReferringPhysicianName", None),
            pixel_spacing=(tuple(float(v) * step for v in spacing) if spacing else None),
            laterality=side,
            patient_orientation=("A", "R"),  # replaced below: highdicom takes single letters
            contributing_equipment=[equipment],
        )
        if "PatientOrientation" in source:  # mammography's own values, e.g. P, FR for an MLO
            self.PatientOrientation = source.PatientOrientation
        self.SeriesDescription = "AI saliency - not for diagnostic use"
        self.ImageType = ["DERIVED", "SECONDARY"]
        self.DerivationDescription = (f"Grad-CAM saliency of {side}{position} for malignancy "
                                      f"(probability {probability:.3f}); not for diagnostic use")[:1024]
        self.BurnedInAnnotation = "YES"
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        purpose = Dataset()
        purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
        purpose.CodeMeaning = "Source image for image processing operation"
        reference.PurposeOfReferenceCodeSequence = [purpose]
        self.SourceImageSequence = [reference]
