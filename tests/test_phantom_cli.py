"""`dicomcr phantom`: labels, masks, determinism, and clear errors on bad arguments."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.dataset import PHANTOM_DICOM
from dicomcr.phantom import LABEL_COLUMNS, CohortSpec, write_cohort

runner = CliRunner()


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_labels_and_masks_describe_the_images(small_cohort: Path) -> None:
    with open(small_cohort / "labels.csv") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == LABEL_COLUMNS
        rows = list(reader)
    assert len(rows) == 8  # one per breast
    assert sorted(r["finding"] for r in rows).count("normal") == 6
    for row in rows:
        assert row["malignant"] == str(int(row["finding"] == "malignant"))
        for view in ("cc", "mlo"):
            ds = pydicom.dcmread(small_cohort / row[f"{view}_image"])
            assert ds.PatientID == row["patient_id"]
            assert ds.StudyInstanceUID == row["study_instance_uid"]
            assert ds.ImageLaterality == row["laterality"]
            assert ds.ViewPosition == view.upper()
            assert ds.PhotometricInterpretation == row["photometric"]
            mask = np.asarray(Image.open(small_cohort / row[f"{view}_mask"]))
            assert mask.shape == (ds.Rows, ds.Columns)
            assert set(np.unique(mask)) <= {0, 255}
            assert mask.any() == (row["finding"] != "normal")
            assert bool(row["lesion_types"]) == (row["finding"] != "normal")
    provenance = json.loads((small_cohort / "phantom.json").read_text())
    assert provenance["seed"] == 11 and provenance["n_studies"] == 4


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    spec = CohortSpec(n_studies=3, seed=5, size="small", vendor="ge")
    write_cohort(spec, tmp_path / "a", workers=1)
    write_cohort(spec, tmp_path / "b", workers=2)
    write_cohort(CohortSpec(n_studies=3, seed=6, size="small", vendor="ge"), tmp_path / "c")
    a, b, c = (_digests(tmp_path / k) for k in "abc")
    assert len(a) == 3 * 8 + 2
    assert a == b
    dicom_a = {k: v for k, v in a.items() if k.endswith(".dcm")}
    dicom_c = {k: v for k, v in c.items() if k.endswith(".dcm")}
    assert not set(dicom_a.values()) & set(dicom_c.values())


def test_command_writes_a_cohort_and_summarises_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["phantom", str(tmp_path / "p"), "--studies", "2", "--size",
                                 "small", "--vendor", "ge", "--seed", "3", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "p" / PHANTOM_DICOM).glob("*/*.dcm"))) == 8
    assert "2 / 8" in result.output and "labels.csv" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--studies", "0"], "positive"),
        (["--studies", "-2"], "positive"),
        (["--vendor", "siemens"], "unknown vendor"),
        (["--size", "huge"], "unknown size"),
        (["--seed", "-1"], "seed"),
    ],
)
def test_bad_arguments_give_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "p"
    result = runner.invoke(app, ["phantom", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()  # nothing written


def test_unwritable_output_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        result = runner.invoke(app, ["phantom", str(out), "--studies", "1", "--size", "small"])
        assert result.exit_code == 2
        assert str(blocker) in result.output
    assert blocker.read_text() == "not a folder"
