"""Inference: classification with Grad-CAM, the saliency SCs and the SR, offline and in the node."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from peers import Orthanc, dciodvfy, free_port
from PIL import Image
from test_node import MG_A, MG_B, NodeProcess, _http, _study, storescu
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.dataset import read_phantom_labels
from dicomcr.data.preprocess import GeometryError
from dicomcr.dicom.report import read_probabilities
from dicomcr.dicom.saliency import SaliencyCapture, render
from dicomcr.inference.classify import Classifier
from dicomcr.inference.objects import write_objects
from dicomcr.models import CNN3, CNN3Spec
from dicomcr.models.modelfile import ModelInfo, load_model, save_model

runner = CliRunner()
SC = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN3 model file (weights seeded, not trained: the plumbing is under test)."""
    torch.manual_seed(3)
    spec = CNN3Spec(channels=(4, 8, 8), hidden=(16, 8), input_size=(64, 64))
    path = tmp_path_factory.mktemp("model") / "cnn3-test.dcmcr"
    save_model(CNN3(spec).eval(), ModelInfo(
        architecture="cnn3", spec=spec.as_dict(),
        preprocessing={"scale": 0.3, "crop_fraction_y": 0.2, "mirror_right": True,
                       "canvas": [246, 250], "input_size": [64, 64]},  # small Hologic crops fit
        trained_crs=[20.0], data_fingerprint="test", threshold=0.5), path)
    return path


def test_grad_cam_lands_on_the_views_and_the_objects_validate(small_cohort: Path, model: Path,
                                                              tmp_path: Path) -> None:
    classifier = Classifier(model, "cpu")
    files = _study(small_cohort, 2)
    result = classifier.classify(files)
    assert [b.laterality for b in result.breasts] == ["L", "R"] and result.missing_views == []
    for breast in result.breasts:
        assert 0 <= breast.probability <= 1
        for name, view in breast.views.items():
            assert view.heat.shape == view.source.pixels.shape and view.heat.max() > 0
            # the map sits on the half of the view that holds the breast (chest wall side)
            columns = view.heat.shape[1]
            chest = slice(0, columns // 2) if breast.laterality == "L" else slice(columns // 2, None)
            assert view.heat[:, chest].sum() > 0.99 * view.heat.sum(), name
    written = write_objects(classifier, result, "20", tmp_path / "out")
    assert sorted(w.kind for w in written) == ["sc"] * 4 + ["sr"]
    for item in written:
        errors, _ = dciodvfy(item.path)
        assert errors == [], errors
        ds = pydicom.dcmread(item.path)
        assert ds.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
        assert ds.SOPClassUID == (SC if item.kind == "sc" else COMPREHENSIVE_SR)
        assert "cnn3-test" in [e.ManufacturerModelName for e in ds.ContributingEquipmentSequence]
    sr = pydicom.dcmread(next(w.path for w in written if w.kind == "sr"))
    said = read_probabilities(sr)
    assert said == pytest.approx({"L": result.breasts[0].probability,
                                  "R": result.breasts[1].probability,
                                  "study": result.probability}, abs=1e-6)
    assert again_the_same(classifier, files, tmp_path, written)


def again_the_same(classifier: Classifier, files: list[Path], tmp_path: Path, written) -> bool:
    """A second run writes objects with the same UIDs (idempotent forwarding)."""
    second = write_objects(classifier, classifier.classify(files), "20", tmp_path / "again")
    return [w.sop_instance_uid for w in second] == [w.sop_instance_uid for w in written]


def test_a_missing_view_is_classified_on_what_is_there_and_said(small_cohort: Path, model: Path,
                                                                 tmp_path: Path) -> None:
    classifier = Classifier(model, "cpu")
    files = [f for f in _study(small_cohort, 0) if f.name != "RMLO.dcm"]
    result = classifier.classify(files)
    assert result.missing_views == ["RMLO"]
    written = write_objects(classifier, result, "20", tmp_path)
    sr = pydicom.dcmread(next(w.path for w in written if w.kind == "sr"))
    texts = [str(item.TextValue) for item in sr.ContentSequence if item.ValueType == "TEXT"]
    assert "Missing views: RMLO" in texts and any("not for diagnostic use" in t for t in texts)


def test_a_study_larger_than_the_models_canvas_is_refused(small_cohort: Path, model: Path,
                                                          tmp_path: Path) -> None:
    """A model trained on smaller images (its canvas) does not shrink a larger study to fit."""
    network, info = load_model(model)
    info.preprocessing = {**info.preprocessing, "canvas": [100, 100]}
    save_model(network, info, tmp_path / "narrow.dcmcr")
    with pytest.raises(GeometryError, match="trained on smaller images"):
        Classifier(tmp_path / "narrow.dcmcr", "cpu").classify(_study(small_cohort, 0))


def test_the_rendering_shows_the_overlay_and_the_warning() -> None:
    view = np.full((400, 300), 0.5, dtype=np.float32)
    heat = np.zeros_like(view)
    heat[250:350, 100:200] = 1.0
    rgb = render(view, heat, ["AI saliency - not for diagnostic use"])
    assert rgb.shape == (400, 300, 3)
    hot, cold = rgb[300, 150].astype(int), rgb[300, 20].astype(int)
    assert cold[0] == cold[1] == cold[2]  # grey where the map is cold
    assert abs(hot[0] - hot[2]) > 60  # coloured where it is hot
    assert (rgb[:40, :200] == [255, 255, 0]).all(axis=2).any()  # yellow text on top
    with pytest.raises(ValueError, match="probability"):
        SaliencyCapture(source=pydicom.Dataset(), view=view, heat=heat, probability=1.5,
                        model_name="m", model_version="1", trained_crs=[20], input_cr="20",
                        series_instance_uid="1.2.3", sop_instance_uid="1.2.4", instance_number=1)


def test_the_node_sends_four_captures_and_a_report_to_orthanc(small_cohort: Path, model: Path,
                                                              tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")
    http_port = free_port()
    node = NodeProcess(tmp_path / "node", {"host": "127.0.0.1", "port": orthanc.dicom_port,
                                           "ae_title": orthanc.aet},
                       sites=[{"name": "hospital-a", "calling_ae": [MG_A], "cr": 20,
                               "model": str(model)}],
                       stable_seconds=60, http_port=http_port)
    try:
        files = _study(small_cohort, 3)
        assert storescu(node.port, MG_A, *files).returncode == 0
        stored = orthanc.wait_for(9, timeout=120)  # 4 images, 4 captures, 1 report
        classes = sorted(t["SOPClassUID"] for t in stored)
        assert classes.count(SC) == 4 and classes.count(COMPREHENSIVE_SR) == 1
        sources = {pydicom.dcmread(f).StudyInstanceUID for f in files}
        assert {t["StudyInstanceUID"] for t in stored} == sources  # same study
        for item in orthanc.get("/instances"):
            tags = orthanc.get(f"/instances/{item}/simplified-tags")
            if tags["SOPClassUID"] not in (SC, COMPREHENSIVE_SR):
                continue
            path = tmp_path / f"{item}.dcm"
            path.write_bytes(orthanc.get(f"/instances/{item}/file", raw=True))
            errors, _ = dciodvfy(path)
            assert errors == [], errors
            ds = pydicom.dcmread(path)
            if tags["SOPClassUID"] == COMPREHENSIVE_SR:
                said = read_probabilities(ds)
            else:
                assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID != ""
                assert (ds.pixel_array[..., 0].astype(int) != ds.pixel_array[..., 2]).any()
        # the same probabilities as `dicomcr evaluate` gives for these images at CR 20
        out = tmp_path / "p.csv"
        evaluated = runner.invoke(app, ["evaluate", str(model), str(small_cohort), "--cr", "20",
                                        "--predictions", str(out), "--workers", "1",
                                        "--cache", str(tmp_path / "cache")])
        assert evaluated.exit_code == 0, evaluated.output
        patient = files[0].parent.name
        rows = [r for r in csv.DictReader(io.StringIO(out.read_text()))
                if r["patient_id"] == patient]
        expected = {r["laterality"]: float(r["probability"]) for r in rows}
        assert {k: said[k] for k in ("L", "R")} == pytest.approx(expected, abs=2e-6)
        health = json.loads(_http(http_port, "/healthz"))
        assert health["studies"] == {"inferred": 1} and health["warnings"] == []
    finally:
        assert node.terminate() == 0
        orthanc.stop()


def test_a_model_that_fails_to_load_disables_that_sites_inference_only(
        small_cohort: Path, model: Path, tmp_path: Path) -> None:
    """One site's bad `model:` switches off that site's inference, said in /healthz and the log;
    its images are still forwarded, and another site's studies are still classified."""
    broken = tmp_path / "broken.dcmcr"
    broken.write_bytes(b"not a model")
    http_port = free_port()
    archive = tmp_path / "archive"
    node = NodeProcess(tmp_path / "node", {"folder": str(archive)},
                       sites=[{"name": "hospital-a", "calling_ae": [MG_A], "cr": 20,
                               "model": str(broken)},
                              {"name": "hospital-b", "calling_ae": [MG_B], "cr": 20,
                               "model": str(model)}], http_port=http_port, stable_seconds=1)
    try:
        assert storescu(node.port, MG_A, *_study(small_cohort, 0)).returncode == 0
        assert storescu(node.port, MG_B, *_study(small_cohort, 3)).returncode == 0  # Hologic
        deadline = time.monotonic() + 120
        while len(list(archive.rglob("*.dcm"))) < 4 + 4 + 5:  # 8 images, B's 4 SCs and SR
            assert time.monotonic() < deadline, list(archive.rglob("*.dcm"))
            time.sleep(0.25)
        health = json.loads(_http(http_port, "/healthz"))
        assert health["status"] == "ok"
        assert health["studies"] == {"skipped": 1, "inferred": 1}, health
        assert [w for w in health["warnings"] if "inference off" in w] == [
            w for w in health["warnings"] if "site hospital-a" in w and "broken.dcmcr" in w]
        assert len(health["warnings"]) == 1
        assert "inference off for site hospital-a" in (tmp_path / "node" / "node.log").read_text()
    finally:
        assert node.terminate() == 0


def test_saliency_command_writes_objects_and_the_figure(small_cohort: Path, model: Path,
                                                        tmp_path: Path) -> None:
    study = next(b.cc.parent for b in read_phantom_labels(small_cohort) if b.malignant)
    twin = tmp_path / "other" / model.name  # a second model file with the same name
    twin.parent.mkdir()
    twin.write_bytes(model.read_bytes())
    result = runner.invoke(app, ["saliency", str(model), str(twin), str(study), "--out",
                                 str(tmp_path / "out"), "--cr", "1", "--cr", "20"])
    assert result.exit_code == 0, result.output
    for name, cr in [(f"{model.parent.name}-cnn3-test", "CR1"), ("other-cnn3-test", "CR20")]:
        objects = sorted((tmp_path / "out" / name / cr).glob("*.dcm"))
        assert [p.name for p in objects] == ["SC_LCC.dcm", "SC_LMLO.dcm", "SC_RCC.dcm",
                                             "SC_RMLO.dcm", "SR.dcm"]
    figure = np.asarray(Image.open(tmp_path / "out" / "saliency.png"))
    assert figure.shape[0] > 300 and figure.shape[1] > 600
    bad = runner.invoke(app, ["saliency", str(study), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "at least one model" in bad.output
    bad = runner.invoke(app, ["saliency", str(study / "LCC.dcm"), str(study), "--out",
                              str(tmp_path)])
    assert bad.exit_code == 2 and "not a readable model file" in bad.output
