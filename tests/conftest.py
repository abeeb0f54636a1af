"""Shared fixtures: small phantom cohorts, and the real DICOM peers the tests run."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomcr.phantom import CohortSpec, write_cohort


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small studies of both vendors (2 normal, 1 benign, 1 malignant), written once."""
    out = tmp_path_factory.mktemp("small-cohort")
    write_cohort(CohortSpec(n_studies=4, seed=11, size="small", vendor="mixed"), out)
    return out
