"""`dicomcr phantom`: labels, masks, determinism, and clear errors on bad arguments."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.dataset import PHANTOM_DICOM, Finding, read_phantom_labels
from dicomcr.phantom import LABEL_COLUMNS, CohortSpec, Difficulty, Tissue, write_cohort

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
        finding = Finding(row["finding"])
        assert finding == Finding.of(row["lesion_types"].split(";"))
        malignant = {"spiculated_mass", "pleomorphic_calcifications"}
        assert row["malignant"] == str(int(bool(malignant & set(row["lesion_types"].split(";")))))
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
            assert mask.any() == (finding != Finding.NORMAL)
            assert bool(row["lesion_types"]) == (finding != Finding.NORMAL)
    findings = {(r["patient_id"], r["laterality"]): Finding(r["finding"]) for r in rows}
    assert {(b.patient_id, b.laterality): b.finding
            for b in read_phantom_labels(small_cohort)} == findings
    provenance = json.loads((small_cohort / "phantom.json").read_text())
    assert provenance["seed"] == 11 and provenance["n_studies"] == 4
    assert provenance["difficulty"] == {"name": "physical", "mass_contrast": 1.0,
                                        "calc_contrast": 1.0, "size_scale": 1.0,
                                        "noise_scale": 1.0}
    tissue = provenance["tissue"]
    assert tissue.pop("units").startswith("attenuation in 1/mm")
    assert set(provenance["detectors"]) == {"hologic", "ge"}
    assert Tissue(**tissue) == Tissue()  # every constant, recorded as used


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
    assert "2 / 8" in result.output
    cells = re.sub(r"[\s│]", "", result.output)  # the table's cells, a long path's folds joined
    assert f"labels{tmp_path / 'p' / 'labels.csv'}" in cells


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--studies", "0"], "positive"),
        (["--studies", "-2"], "positive"),
        (["--vendor", "siemens"], "unknown vendor"),
        (["--size", "huge"], "unknown size"),
        (["--seed", "-1"], "seed"),
        (["--difficulty", "hard"], "unknown difficulty"),
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


def test_a_cohort_is_not_written_over_another_unless_forced(tmp_path: Path) -> None:
    """A new seed into an old OUT would leave the old patients beside a labels.csv that no longer
    lists them: refused; `force` replaces the old cohort (and only what the phantom writes)."""
    out = tmp_path / "p"
    write_cohort(CohortSpec(n_studies=2, seed=1, size="small", vendor="ge"), out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        write_cohort(CohortSpec(n_studies=1, seed=2, size="small", vendor="ge"), out)
    assert len(list((out / PHANTOM_DICOM).iterdir())) == 2  # untouched
    write_cohort(CohortSpec(n_studies=1, seed=2, size="small", vendor="ge",
                            difficulty=Difficulty.named("conspicuous")), out, force=True)
    patients = sorted(p.name for p in (out / PHANTOM_DICOM).iterdir())
    assert patients == ["PH2-00000"] and sorted(p.name for p in (out / "masks").iterdir()) == patients
    assert [b.patient_id for b in read_phantom_labels(out)] == patients * 2
    assert json.loads((out / "phantom.json").read_text())["difficulty"]["name"] == "conspicuous"
    assert (out / "notes.txt").read_text() == "mine"


def test_a_cohort_is_not_overwritten_without_force(tmp_path: Path) -> None:
    out = tmp_path / "p"
    args = ["phantom", str(out), "--studies", "1", "--size", "small", "--workers", "1"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, [*args, "--seed", "4"])
    assert again.exit_code == 2 and "is not empty" in again.output
    replaced = runner.invoke(app, [*args, "--seed", "4", "--force", "--difficulty", "conspicuous"])
    assert replaced.exit_code == 0, replaced.output
    recorded = json.loads((out / "phantom.json").read_text())
    assert recorded["seed"] == 4 and "conspicuous" in json.dumps(recorded["difficulty"])


def test_the_fixed_choices_are_the_librarys_enums(tmp_path: Path) -> None:
    """--size, --vendor and --difficulty take the values of the library's enums (a difficulty in
    any case, as `Difficulty.named` reads it); the spec holds the enums, phantom.json their
    values; the summary names the processes that wrote the cohort (at most one per study)."""
    from dicomcr.phantom.cohort import DifficultyName, Size, Vendor

    assert [v.value for v in Vendor] == ["hologic", "ge", "mixed"]
    assert DifficultyName(" Conspicuous ") is DifficultyName.CONSPICUOUS
    spec = CohortSpec(n_studies=1, size="small", vendor="ge")
    assert (spec.size, spec.vendor) == (Size.SMALL, Vendor.GE)
    out = tmp_path / "p"
    result = runner.invoke(app, ["phantom", str(out), "-n", "1", "--size", "small", "--vendor", "ge",
                                 "--difficulty", "Conspicuous", "--workers", "4"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "phantom.json").read_text())
    assert (recorded["size"], recorded["vendor"], recorded["difficulty"]["name"]) == (
        "small", "ge", "conspicuous")
    assert "1 worker)" in result.output  # one study: one process, whatever --workers asked
    help_text = " ".join(runner.invoke(app, ["phantom", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "[hologic|ge|mixed]" in help_text and "[physical|conspicuous]" in help_text
