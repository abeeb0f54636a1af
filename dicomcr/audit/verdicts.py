"""The words of the audit's verdicts and of its exit gate, as enums. Light to import: the command
line offers `FailOn` and `DetectabilityMode` as it starts."""

from __future__ import annotations

from enum import StrEnum


class GuidelineStatus(StrEnum):
    """A site's highest stored CR against the guidelines it is judged by."""

    WITHIN = "within"
    VIOLATION = "violation"  # above every guideline it is judged by


class GuidelineLimit(StrEnum):
    """What a guideline row limits: a ratio (its `max_cr`), lossy compression as such (lossless
    only: judged on whether a site stores any lossy image), or nothing (a row that gives no ratio
    of its own: shown, never judged)."""

    RATIO = "ratio"
    LOSSLESS_ONLY = "lossless-only"
    NO_RATIO = "no-ratio"


class ModelStatus(StrEnum):
    """The deployed model at a site's CR, from cross-CR results (`audit.model_verdict`)."""

    OK = "OK"
    DEGRADED = "degraded"  # the AUROC's CI at the site's CR lies wholly below CR 1's
    CANNOT_JUDGE = "cannot judge"  # no better than chance at CR 1: it cannot show a loss
    NOT_VALIDATED = "not validated"  # the results hold no test at the site's CR (or CR 1)
    NO_RESULTS = "no results"
    OTHER_MODEL = "other model"
    OTHER_DATA = "other data"


class DetectabilityMode(StrEnum):
    """How the audit measures what a site's CR takes away from each finding type (the model
    observers on phantom views, `audit.detectability`): the quick task (16 pairs per finding,
    wider intervals), the full one, or not at all."""

    QUICK = "quick"
    FULL = "full"
    OFF = "off"


class FailOn(StrEnum):
    """What makes the audit fail (exit 1): a site above its guidelines or breaking the DICOM
    rules (VIOLATION); a model that loses AUROC at a site's CR, or that cannot judge because it
    is no better than chance at CR 1 (DEGRADED); a finding type whose detectability the site's
    highest CR takes away (LOST), or takes away anything of, significantly
    (DEGRADED_DETECTABILITY: degraded or lost)."""

    VIOLATION = "violation"
    DEGRADED = "degraded"
    LOST = "lost"
    DEGRADED_DETECTABILITY = "degraded-detectability"
