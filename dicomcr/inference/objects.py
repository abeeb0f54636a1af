"""A classified study as DICOM: one saliency Secondary Capture per view and one Structured Report.

Shared by the node (services/inference.py) and `dicomcr saliency`. UIDs are functions of the
sources and the model, so running a study twice writes the same objects (idempotent forwarding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.preprocess import normalise_image
from ..dicom.report import BreastFinding, ClassificationReport
from ..dicom.saliency import SaliencyCapture
from ..dicom.uids import derived_uid
from .classify import Classifier, StudyResult


@dataclass(frozen=True)
class Written:
    """One DICOM object written for a study."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    kind: str  # "sc" or "sr"


def write_objects(classifier: Classifier, result: StudyResult, input_cr: str, out: Path
                  ) -> list[Written]:
    """Write the study's SCs (one per classified view) and its SR into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    version = classifier.version
    series = derived_uid(result.study_uid, "saliency-series", version)
    written = []
    number = 0
    for breast in result.breasts:
        for name, view in sorted(breast.views.items()):
            number += 1
            ds = view.source.dataset
            uid = derived_uid(ds.SOPInstanceUID, "saliency", version)
            sc = SaliencyCapture(
                source=ds, view=normalise_image(view.source.pixels, ds), heat=view.heat,
                probability=breast.probability,
                model_name=classifier.name, model_version=version,
                trained_crs=classifier.info.trained_crs, input_cr=input_cr,
                series_instance_uid=series, sop_instance_uid=uid, instance_number=number)
            path = out / f"SC_{breast.laterality}{name}.dcm"
            sc.save_as(path, enforce_file_format=True)
            written.append(Written(uid, str(sc.SOPClassUID), path, "sc"))
    uid = derived_uid(result.study_uid, "report", version)
    sr = ClassificationReport(
        evidence=[v.source.dataset for b in result.breasts for v in b.views.values()],
        findings=[BreastFinding(b.laterality, b.probability) for b in result.breasts],
        threshold=classifier.threshold, model_name=classifier.name, model_version=version,
        trained_crs=classifier.info.trained_crs, input_cr=input_cr,
        missing_views=result.missing_views,
        series_instance_uid=derived_uid(result.study_uid, "report-series", version),
        sop_instance_uid=uid)
    path = out / "SR.dcm"
    sr.save_as(path, enforce_file_format=True)
    written.append(Written(uid, str(sr.SOPClassUID), path, "sr"))
    return written
