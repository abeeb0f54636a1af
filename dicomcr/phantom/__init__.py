"""A physically plausible four-view mammography phantom with ground-truth lesion masks."""

from .cohort import LABEL_COLUMNS, CohortSpec, CohortSummary, write_cohort
from .params import DETECTORS, DIFFICULTIES, PHYSICAL, CohortMix, Detector, Difficulty, Tissue
from .study import FINDINGS, VIEWS, PhantomStudy, PhantomView, generate_study

__all__ = [
    "DETECTORS",
    "DIFFICULTIES",
    "FINDINGS",
    "LABEL_COLUMNS",
    "PHYSICAL",
    "VIEWS",
    "CohortMix",
    "CohortSpec",
    "CohortSummary",
    "Detector",
    "Difficulty",
    "PhantomStudy",
    "PhantomView",
    "Tissue",
    "generate_study",
    "write_cohort",
]
