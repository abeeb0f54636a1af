"""The phantom's files are valid Digital Mammography For Presentation objects, for real peers too,
and its DICOM tree is sent whole by `storescu +sd +r`, as an administrator sends a folder."""

from __future__ import annotations

import csv
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from peers import StoreSCP, dciodvfy, require
from PIL import Image
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.dataset import PHANTOM_DICOM, PHANTOM_MASKS
from dicomcr.dicom import MammographyImage

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
VIEW_CODE = {"CC": "399162004", "MLO": "399368009"}


def _files(cohort: Path) -> list[Path]:
    return sorted((cohort / PHANTOM_DICOM).glob("*/*.dcm"))


def test_every_file_passes_dciodvfy(small_cohort: Path) -> None:
    files = _files(small_cohort)
    assert len(files) == 16
    for path in files:
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path}: {errors}"


def test_mammography_attributes(small_cohort: Path) -> None:
    sop_uids = set()
    for path in _files(small_cohort):
        ds = pydicom.dcmread(path)
        name = path.stem  # LCC, LMLO, RCC, RMLO
        laterality, view = name[0], name[1:]
        assert ds.SOPClassUID == MG_FOR_PRESENTATION
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "MG"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.ImageLaterality == laterality
        assert ds.ViewPosition == view
        assert ds.ViewCodeSequence[0].CodeValue == VIEW_CODE[view]
        assert ds.BodyPartExamined == "BREAST"
        assert ds.PixelSpacing == ds.ImagerPixelSpacing
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 14)
        assert ds.HighBit == ds.BitsStored - 1
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert float(ds.WindowWidth) > 0
        assert ds.PatientID and ds.StudyInstanceUID and ds.SeriesInstanceUID and ds.StudyDate
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns)
        assert int(pixels.max()) < 2**ds.BitsStored
        sop_uids.add(ds.SOPInstanceUID)
    assert len(sop_uids) == 16


def test_vendors_sizes_and_polarity(small_cohort: Path) -> None:
    seen = {}
    for path in _files(small_cohort):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        seen.setdefault(ds.Manufacturer, set()).add(
            (ds.Rows, ds.Columns, float(ds.PixelSpacing[0]), ds.BitsStored))
    # small = the devices' fields of view binned by 4
    assert seen["HOLOGIC, Inc."] == {(1024, 832, 0.28, 12)}
    assert seen["GE MEDICAL SYSTEMS"] == {(574, 478, 0.4, 14)}


def test_study_identifiers_are_shared_within_a_study(small_cohort: Path) -> None:
    for folder in sorted((small_cohort / PHANTOM_DICOM).iterdir()):
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*"))]
        assert len(headers) == 4
        for key in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber"):
            assert len({h.get(key) for h in headers}) == 1, key
        assert sorted(h.InstanceNumber for h in headers) == [1, 2, 3, 4]


def test_gdcm_reads_what_pydicom_reads(small_cohort: Path, tmp_path: Path) -> None:
    """An independent toolkit decodes the same pixels (GDCM's raw rewrite, read back)."""
    gdcmconv = require("gdcmconv")
    source = _files(small_cohort)[0]
    out = tmp_path / "raw.dcm"
    subprocess.run([gdcmconv, "--raw", str(source), str(out)], check=True, timeout=60)
    np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array,
                                  pydicom.dcmread(source).pixel_array)


def test_storescu_sends_the_dicom_tree_whole(tmp_path: Path) -> None:
    """`storescu +sd +r OUT/dicom` stores every image: the tree holds DICOM files and nothing else
    (a mask or labels file in it made storescu abort the association after the first study)."""
    out = tmp_path / "cohort"
    result = CliRunner().invoke(app, ["phantom", str(out), "--studies", "2", "--size", "small",
                                      "--seed", "4", "--workers", "1"])
    assert result.exit_code == 0, result.output
    tree = [p for p in (out / PHANTOM_DICOM).rglob("*") if not p.is_dir()]
    assert len(tree) == 8 and {p.suffix for p in tree} == {".dcm"}
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in tree}
    scp = StoreSCP(tmp_path / "received")
    try:
        run = subprocess.run([require("storescu"), "+sd", "+r", "-aet", "ADMIN", "-aec", scp.aet,
                              "127.0.0.1", str(scp.port), str(out / PHANTOM_DICOM)],
                             capture_output=True, text=True, timeout=120)
    finally:
        scp.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    received = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                for p in scp.folder.iterdir()}
    assert received == sent


def test_writer_rejects_bad_input() -> None:
    good = dict(
        photometric_interpretation="MONOCHROME2", bits_stored=12, pixel_spacing_mm=0.07,
        laterality="L", view="CC", patient_id="P1", patient_name="A^B",
        patient_birth_date=dt.date(1970, 1, 1), patient_sex="F",
        study_instance_uid="1.2.3", study_date=dt.date(2020, 1, 1),
        study_time=dt.time(10, 0), study_id="1", accession_number="A1",
        series_instance_uid="1.2.3.4", series_number=1, sop_instance_uid="1.2.3.4.5",
        instance_number=1, manufacturer="X", manufacturer_model_name="Y",
        detector_type="DIRECT", window_center=2048, window_width=4096,
    )
    image = np.zeros((8, 8), dtype=np.uint16)
    assert MammographyImage(image, **good).Rows == 8
    cases = {
        "laterality": ("B", "laterality"),
        "view": ("AP", "view"),
        "bits_stored": (17, "bits_stored"),
        "photometric_interpretation": ("RGB", "photometric_interpretation"),
        "sop_instance_uid": ("1.2.abc", "sop_instance_uid"),
        "window_width": (0, "window_width"),
        "patient_id": ("x" * 65, "patient_id"),
    }
    for key, (value, word) in cases.items():
        with pytest.raises(ValueError, match=word):
            MammographyImage(image, **{**good, key: value})
    with pytest.raises(ValueError, match="12-bit maximum"):
        MammographyImage(np.full((8, 8), 4096, dtype=np.uint16), **good)
    with pytest.raises(ValueError, match="uint16"):
        MammographyImage(image.astype(np.float32), **good)
    with pytest.raises(ValueError, match="2-D"):
        MammographyImage(np.zeros((2, 8, 8), dtype=np.uint16), **good)


@pytest.mark.slow
def test_full_size_cohort_from_the_command_line(tmp_path: Path) -> None:
    """The issue's acceptance run: 4 full-size studies, 16 dciodvfy-clean files, labels, masks."""
    out = tmp_path / "p"
    run = subprocess.run(
        [sys.executable, "-m", "dicomcr", "phantom", str(out), "--studies", "4", "--size", "full"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "120"},
    )
    assert run.returncode == 0, run.stderr
    files = _files(out)
    assert len(files) == 16
    sizes = set()
    for path in files:
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path}: {errors}"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sizes.add((ds.Manufacturer, ds.Rows, ds.Columns, float(ds.PixelSpacing[0])))
        mask = Image.open(out / PHANTOM_MASKS / path.parent.name / f"{path.stem}.png")
        assert mask.size == (ds.Columns, ds.Rows)
    assert sizes == {("HOLOGIC, Inc.", 4096, 3328, 0.07), ("GE MEDICAL SYSTEMS", 2294, 1914, 0.1)}
    with open(out / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8
    assert "4 / 16" in run.stdout
