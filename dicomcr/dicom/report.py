"""The classification Structured Report: one Comprehensive SR (TID 1500) per study.

A highdicom `ComprehensiveSR` whose content is a Measurement Report: the device observer is the
model; one measurement group per breast (finding site left or right breast) and one for the study,
each with the probability of cancer (DCM 111047) and the decision at the model's operating threshold
(malignant neoplastic disease present or absent), the algorithm (name, version); text items give
the CR the model was trained at, the CR of the input, the views that were missing, and that the
result is not for diagnostic use. Evidence: the images classified.
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom import ContributingEquipment
from highdicom.sr import (
    AlgorithmIdentification,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .uids import check_uid, derived_uid

SCREENING_MAMMOGRAPHY = Code("24623002", "SCT", "Screening mammography")
MALIGNANCY = Code("363346000", "SCT", "Malignant neoplastic disease")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")
PROBABILITY = codes.DCM.ProbabilityOfCancer
BREASTS = {"L": codes.SCT.LeftBreast, "R": codes.SCT.RightBreast}
NOT_FOR_DIAGNOSIS = "AI result - not for diagnostic use"


@dataclass(frozen=True)
class BreastFinding:
    """What the report says of one breast."""

    laterality: str
    probability: float

    def __post_init__(self) -> None:
        if self.laterality not in BREASTS:
            raise ValueError(f"laterality must be L or R, got {self.laterality!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")


class ClassificationReport(ComprehensiveSR):
    """The study's malignancy probabilities, per breast and for the study, as a TID 1500 SR."""

    def __init__(self, *, evidence: list[Dataset], findings: list[BreastFinding], threshold: float,
                 model_name: str, model_version: str, trained_crs: list[float], input_cr: str,
                 missing_views: list[str], series_instance_uid: str, sop_instance_uid: str,
                 series_number: int = 9902, instance_number: int = 1) -> None:
        if not evidence:
            raise ValueError("evidence must name at least one image")
        if not findings:
            raise ValueError("findings must hold at least one breast")
        if len({f.laterality for f in findings}) != len(findings):
            raise ValueError("one finding per breast")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if not model_name or not model_version:
            raise ValueError("model_name and model_version are required")
        studies = {str(ds.StudyInstanceUID) for ds in evidence}
        if len(studies) != 1:
            raise ValueError(f"the evidence belongs to {len(studies)} studies, not one")
        check_uid(series_instance_uid, "series_instance_uid")
        check_uid(sop_instance_uid, "sop_instance_uid")
        algorithm = AlgorithmIdentification(name=model_name[:64], version=model_version[:64],
                                            manufacturer="dicomcr")
        study_uid = studies.pop()

        def group(label: str, probability: float, site: Code | None) -> MeasurementsAndQualitativeEvaluations:
            decision = PRESENT if probability >= threshold else ABSENT
            return MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(uid=derived_uid(sop_instance_uid, label),
                                                       identifier=label),
                finding_type=MALIGNANCY, algorithm_id=algorithm,
                finding_sites=[FindingSite(site)] if site is not None else None,
                measurements=[Measurement(name=PROBABILITY, value=round(probability, 6),
                                          unit=codes.UCUM.NoUnits, algorithm_id=algorithm)],
                qualitative_evaluations=[QualitativeEvaluation(MALIGNANCY, decision)])

        groups = [group(f"{'left' if f.laterality == 'L' else 'right'} breast", f.probability,
                        BREASTS[f.laterality]) for f in findings]
        groups.append(group("study", max(f.probability for f in findings), None))
        observer = ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=derived_uid("dicomcr-model", model_name, model_version),
                name=model_name[:64], manufacturer_name="dicomcr", model_name=model_name[:64]))
        report = MeasurementReport(
            observation_context=ObservationContext(observer_device_context=observer),
            procedure_reported=SCREENING_MAMMOGRAPHY, imaging_measurements=groups)
        crs = ", ".join(f"{c:g}" for c in trained_crs)
        notes = [NOT_FOR_DIAGNOSIS,
                 f"Model {model_name} version {model_version}, trained at CR {crs}; "
                 f"operating threshold {threshold:.4f}",
                 f"Input: the images at CR {input_cr} (what the archive holds)",
                 "Missing views: " + (", ".join(missing_views) if missing_views else "none")]
        for note in notes:
            report[0].ContentSequence.append(
                TextContentItem(codes.DCM.Comment, note, relationship_type="CONTAINS"))
        first = evidence[0]
        super().__init__(
            evidence=evidence, content=report, series_instance_uid=series_instance_uid,
            series_number=series_number, sop_instance_uid=sop_instance_uid,
            instance_number=instance_number, manufacturer="dicomcr", is_complete=True,
            contributing_equipment=[ContributingEquipment(
                manufacturer="dicomcr", purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=model_name[:64], software_versions=model_version)])
        self.SeriesDescription = "AI classification - not for diagnostic use"
        if self.StudyInstanceUID != study_uid or self.PatientID != first.get("PatientID", ""):
            raise ValueError("the report does not land in the study of its evidence")


def read_probabilities(report: Dataset) -> dict[str, float]:
    """{"L": p, "R": p, "study": p} back from a report written by ClassificationReport."""
    out: dict[str, float] = {}

    def walk(items, label: str | None) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item \
                else ""
            if item.ValueType == "TEXT" and name == "112039":  # Tracking Identifier
                label = str(item.TextValue)
            if item.ValueType == "NUM" and name == PROBABILITY.value and label:
                key = {"left breast": "L", "right breast": "R"}.get(label, label)
                out[key] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence, label if item.ValueType != "CONTAINER" else None)

    walk(report.ContentSequence, None)
    return out
