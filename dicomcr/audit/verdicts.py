"""The words of the audit's verdicts and of its exit gate, as enums. Light to import: the command
line offers `FailOn` as it starts."""

from __future__ import annotations

from enum import StrEnum


class GuidelineStatus(StrEnum):
    """A site's highest stored CR against the guidelines it is judged by."""

    WITHIN = "within"
    VIOLATION = "violation"  # above every guideline it is judged by


class ModelStatus(StrEnum):
    """The deployed model at a site's CR, from cross-CR results (`audit.model_verdict`)."""

    OK = "OK"
    DEGRADED = "degraded"  # the AUROC's CI at the site's CR lies wholly below CR 1's
    NOT_VALIDATED = "not validated"  # the results hold no test at the site's CR (or CR 1)
    NO_RESULTS = "no results"
    OTHER_MODEL = "other model"
    OTHER_DATA = "other data"


class FailOn(StrEnum):
    """What makes the audit fail (exit 1): a site above its guidelines or breaking the DICOM
    rules (VIOLATION), or a model that loses AUROC at a site's CR (DEGRADED)."""

    VIOLATION = "violation"
    DEGRADED = "degraded"
