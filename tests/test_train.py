"""Training CNN3 on a phantom cohort: patient splits, a loadable model, reproducible weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.cache import breast_inputs
from dicomcr.data.dataset import read_phantom_labels
from dicomcr.data.preprocess import Preprocessing
from dicomcr.experiments.run import Events, evaluate, train, train_classifier
from dicomcr.experiments.splits import split_patients
from dicomcr.experiments.train import Samples, TrainOptions, predict, train_model
from dicomcr.models.modelfile import load_model
from dicomcr.phantom import CohortSpec, write_cohort

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-cohort")
    write_cohort(CohortSpec(n_studies=24, seed=9, size="small", vendor="ge"), out)
    return out


def test_splits_are_by_patient_stratified_and_seeded() -> None:
    patients = [f"p{i}" for i in range(100) for _ in range(2)]  # two breasts each
    labels = [int(i % 5 == 0 and side == 0) for i in range(100) for side in range(2)]
    train, val, test = split_patients(patients, labels, seed=1)
    assert train | val | test == set(patients)
    assert not (train & val or train & test or val & test)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    positives = {p for p, y in zip(patients, labels, strict=True) if y}
    assert (len(train & positives), len(val & positives), len(test & positives)) == (14, 2, 4)
    assert split_patients(patients, labels, seed=1) == (train, val, test)
    assert split_patients(patients, labels, seed=2) != (train, val, test)


def test_a_small_class_gets_a_patient_on_every_side_and_too_few_are_refused() -> None:
    """Rounding 7:1:2 would leave validation without a cancer for fewer than 6 patients of a
    class (a NaN validation AUROC, a threshold from nothing): each side gets one; fewer than 3
    of a class are refused, saying how many are needed."""
    patients = [f"p{i}" for i in range(14)]
    labels = [int(i < 4) for i in range(14)]  # 4 patients with a cancer, 10 without
    sides = split_patients(patients, labels, seed=0)
    for side in sides:
        assert {labels[patients.index(p)] for p in side} == {0, 1}
    with pytest.raises(ValueError) as refused:
        split_patients(patients[:6], [1, 0, 0, 0, 0, 0], seed=0)  # the 6 patients
    assert str(refused.value) == (
        "too few patients: the 7:1:2 split by patient (one each for training, validation and "
        "test) needs at least 3 patients with a malignant breast and 3 without; the data have 1 "
        "and 5")
    with pytest.raises(ValueError, match="have 0 and 6"):
        split_patients(patients[:6], [0] * 6, seed=0)  # no cancer at all


def test_training_refuses_a_validation_without_both_classes() -> None:
    """The library's own guard: no NaN validation AUROC, no threshold from one class."""
    inputs = {1.0: np.zeros((6, 8, 8), dtype=np.float16)}
    labels = np.array([0, 1, 0, 1, 0, 0])
    train = Samples.of(inputs, labels, np.arange(4), [1.0])
    validation = Samples.of(inputs, labels, np.array([4, 5]), [1.0])
    with pytest.raises(ValueError, match="the validation breasts need both classes"):
        train_model(lambda: torch.nn.Linear(1, 1), train, validation, TrainOptions(epochs=1))


def _small(cohort: Path, folder: Path, patients: int) -> Path:
    """A cohort of the first `patients` patients of `cohort` (the same DICOM files)."""
    folder.mkdir()
    (folder / "dicom").symlink_to(cohort / "dicom")
    lines = (cohort / "labels.csv").read_text().splitlines()
    (folder / "labels.csv").write_text("\n".join(lines[:1 + 2 * patients]) + "\n")
    return folder


def _train(cohort: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", str(cohort), "--epochs", "2", "--input-size", "64",
                               "--batch-size", "8", "--seed", "3", "--out", str(out), *extra])


def test_train_writes_a_model_that_loads_and_is_reproducible(cohort: Path, tmp_path: Path) -> None:
    first = _train(cohort, tmp_path / "a.dcmcr", "--cr-mix", "1,20")
    assert first.exit_code == 0, first.output
    cache = sorted((cohort / ".dicomcr-cache").glob("*.npy"))
    crops = [p for p in cache if not p.name.startswith("inputs-")]
    assert len(crops) == 24 * 4 * 2  # every view at both CRs, preprocessed once
    assert len(cache) - len(crops) == 2  # and the inputs at each CR, float16, in one file
    stamps = [p.stat().st_mtime_ns for p in cache]
    second = _train(cohort, tmp_path / "b.dcmcr", "--cr-mix", "1,20")
    assert second.exit_code == 0, second.output
    assert [p.stat().st_mtime_ns for p in cache] == stamps  # the rerun used the cache
    model_a, info = load_model(tmp_path / "a.dcmcr")
    model_b, _ = load_model(tmp_path / "b.dcmcr")
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name  # same seed, same data: same weights on the CPU
    assert info.trained_crs == [1.0, 20.0]
    assert info.preprocessing["input_size"] == [64, 64]
    assert info.preprocessing["canvas"] == [138, 142]  # small GE crops: 138 x 71 per view
    assert len(info.data_fingerprint) == 16 and "best_epoch" in info.validation
    assert 0 < info.threshold < 1 and "input" in first.output


def test_the_library_trains_a_model_with_its_threshold_and_test_metrics(cohort: Path,
                                                                        tmp_path: Path) -> None:
    """What `dicomcr train` and the demo call: split, train, threshold, test, model file."""
    seen: list[dict] = []
    trained = train_classifier(
        read_phantom_labels(cohort), [20.0], tmp_path / "m.dcmcr", cohort / ".dicomcr-cache",
        options=TrainOptions(epochs=2, batch_size=8, seed=3),
        preprocessing=Preprocessing(input_size=(64, 64)), events=Events(epoch=seen.append))
    assert [r["epoch"] for r in seen] == [1, 2] and trained.split == (16, 3, 5)
    _, info = load_model(trained.path)
    assert info.threshold == trained.threshold
    assert info.validation["threshold_rule"] == "Youden's J on validation"
    assert 0 <= info.validation["val_auroc"] <= 1  # 5 cancers: one validates (none did before)
    assert info.validation["split"] == [16, 3, 5] and set(trained.test) == {20.0}
    assert Preprocessing.from_dict(info.preprocessing).model_input == (64, 64)


@pytest.mark.parametrize(("args", "message"), [
    (["--cr", "20", "--cr-mix", "1,20"], "exactly one"),
    ([], "exactly one"),
    (["--cr-mix", "abc"], "CRs are"),
    (["--cr", "0.5"], "> 1"),
])
def test_bad_training_arguments(cohort: Path, tmp_path: Path, args, message) -> None:
    result = runner.invoke(app, ["train", str(cohort), "--out", str(tmp_path / "m"), *args])
    assert result.exit_code == 2 and message in result.output


def test_too_few_patients_and_a_bad_output_are_refused_before_any_work(cohort: Path,
                                                                       tmp_path: Path) -> None:
    """One line, exit 2, nothing preprocessed or trained (the cache stays empty)."""
    cache = tmp_path / "cache"
    few = _small(cohort, tmp_path / "few", 6)
    (tmp_path / "afile").write_text("")
    for data, out, said in (
            (few, tmp_path / "m.dcmcr", "too few patients: the 7:1:2 split by patient"),
            (cohort, tmp_path / "afile" / "m.dcmcr",
             f"cannot write {tmp_path / 'afile' / 'm.dcmcr'}: {tmp_path / 'afile'} exists and "
             "is not a folder"),
            (cohort, tmp_path, f"{tmp_path} is a folder: give a file name")):
        result = runner.invoke(app, ["train", str(data), "--cr", "20", "--epochs", "1",
                                     "--input-size", "64", "--cache", str(cache), "--out",
                                     str(out)])
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and said in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output and not cache.exists()


def test_a_folder_without_labels_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path), "--cr", "20", "--out",
                                 str(tmp_path / "m")])
    assert result.exit_code == 2 and "labels.csv" in result.output


def test_evaluate_reports_auroc_and_auprc_and_writes_predictions(cohort: Path,
                                                                  tmp_path: Path) -> None:
    assert _train(cohort, tmp_path / "m.dcmcr", "--cr", "20").exit_code == 0
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["evaluate", str(tmp_path / "m.dcmcr"), str(cohort), "--cr", "20",
                                 "--cr", "1", "--predictions", str(out)])
    assert result.exit_code == 0, result.output
    assert "95% CI" in result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "patient_id,laterality,malignant,cr,probability"
    assert len(lines) == 1 + 2 * 48  # every breast at both CRs
    # the same probabilities as the library gives for the same breasts and model
    model, info = load_model(tmp_path / "m.dcmcr")
    breasts = read_phantom_labels(cohort)
    p = Preprocessing.from_dict(info.preprocessing)
    x = breast_inputs(breasts, [20.0], p, cohort / ".dicomcr-cache")[20.0]
    expected = predict(model, x, torch.device("cpu"))
    at20 = [float(line.rsplit(",", 1)[1]) for line in lines[1:] if line.split(",")[3] == "20"]
    assert at20 == pytest.approx(expected.tolist(), abs=1e-6)
    bad = runner.invoke(app, ["evaluate", str(tmp_path / "p.csv"), str(cohort)])
    assert bad.exit_code == 2 and "not a readable model file" in bad.output


def test_crs_out_of_reach_of_small_images_are_skipped_or_refused(cohort: Path,
                                                                 tmp_path: Path) -> None:
    """Small GE views reach CR 2143 at most (issue 16, item 8): a CR above it is skipped with
    one line, the run going on with the others; a run left without a CR is refused, naming the
    highest CR every view reaches, before any work."""
    cache = tmp_path / "cache"
    refused = runner.invoke(app, ["train", str(cohort), "--cr", "11000", "--cache", str(cache),
                                  "--out", str(tmp_path / "x.dcmcr")])
    assert refused.exit_code == 2 and not cache.exists(), refused.output
    said = " ".join(refused.output.split())
    assert ("error: CR 11000 is out of reach for this dataset's images: the highest CR every "
            "view reaches is 2143 (96 view(s) reach at most CR 2143; a codestream keeps at least "
            "256 bytes)") in said

    mixed = _train(cohort, tmp_path / "m.dcmcr", "--cr-mix", "1,20,5000,11000")
    assert mixed.exit_code == 0, mixed.output
    said = " ".join(mixed.output.split())
    assert "CR 5000, 11000 skipped: out of reach for some of this dataset's images" in said
    assert "going on with CR 1, 20." in said
    _, info = load_model(tmp_path / "m.dcmcr")
    assert info.trained_crs == [1.0, 20.0]

    skipped = runner.invoke(app, ["evaluate", str(tmp_path / "m.dcmcr"), str(cohort), "--cr",
                                  "20,11000"])
    assert skipped.exit_code == 0, skipped.output
    assert "CR 11000 skipped" in " ".join(skipped.output.split())
    only = runner.invoke(app, ["evaluate", str(tmp_path / "m.dcmcr"), str(cohort), "--cr",
                               "11000"])
    assert only.exit_code == 2 and "highest CR every view reaches is 2143" in " ".join(
        only.output.split())


def test_resnet18_trains_from_scratch_when_no_imagenet_weights_are_on_disk(
        cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch cache
    result = _train(cohort, tmp_path / "r.dcmcr", "--cr", "1", "--arch", "resnet18")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "not found" in said and "(nothing is downloaded): training ResNet18 from scratch" in said
    _, info = load_model(tmp_path / "r.dcmcr")
    assert info.architecture == "resnet18" and info.spec["imagenet"] is False
    missing = runner.invoke(app, ["train", str(cohort), "--cr", "1", "--arch", "resnet18",
                                  "--imagenet-weights", str(tmp_path / "none.pth"), "--out",
                                  str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    bad = runner.invoke(app, ["train", str(cohort), "--cr", "1", "--arch", "vgg", "--out",
                              str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown architecture" in bad.output


def test_one_evaluate_for_the_command_and_the_demo(cohort: Path, tmp_path: Path) -> None:
    """`evaluate`: the model file on every breast at each CR (its own by default), its AUROC and
    AUPRC with CIs from those probabilities, the predictions CSV, and, for the audit and the
    report, a results folder with one fold (what the demo writes)."""
    from dicomcr.audit.audit import read_results
    from dicomcr.experiments.metrics import auprc_bootstrap, auroc_delong

    breasts = read_phantom_labels(cohort)
    trained = train_classifier(breasts, [20.0], tmp_path / "m.dcmcr", cohort / ".dicomcr-cache",
                               options=TrainOptions(epochs=1, batch_size=8, seed=3),
                               preprocessing=Preprocessing(input_size=(64, 64)))
    notes: list[str] = []
    tested = evaluate(trained.path, breasts, [1.0, 20.0, 11000.0], cohort / ".dicomcr-cache",
                      out=tmp_path / "results", predictions=tmp_path / "p.csv", seed=4,
                      source="the cohort", events=Events(note=notes.append))
    assert list(tested.probabilities) == [1.0, 20.0] and "CR 11000 skipped" in notes[0]
    labels = np.array([b.malignant for b in breasts])
    for cr, (auroc, auprc) in tested.metrics.items():  # type: ignore[misc]
        assert auroc == auroc_delong(labels, tested.probabilities[cr])
        assert auprc == auprc_bootstrap(labels, tested.probabilities[cr], 4)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * len(breasts)
    document = read_results(tested.folder)
    assert tested.folder == tmp_path / "results" and document["meta"]["folds"] == 1
    assert document["meta"]["model_data_fingerprint"] == trained.info.data_fingerprint
    assert [(r["model"], r["test_cr"], round(r["auroc"], 4)) for r in document["rows"]] == [
        ("M-CR20", cr, round(tested.metrics[cr][0].value, 4)) for cr in (1.0, 20.0)]  # type: ignore[index]
    default = evaluate(trained.path, breasts, None, cohort / ".dicomcr-cache")
    assert list(default.probabilities) == [20.0] and default.folder is None
    with pytest.raises(ValueError, match="is a folder: give a file name"):
        evaluate(trained.path, breasts, None, cohort / ".dicomcr-cache", predictions=tmp_path)


def test_train_decides_how_it_runs(cohort: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process with nproc 1; nproc below 1, or any under torchrun (whose own
    --nproc-per-node says it), refused before any work."""
    breasts = read_phantom_labels(cohort)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="--nproc 0: give N >= 2, outside torchrun"):
        train(breasts, [20.0], tmp_path / "m.dcmcr", cache, nproc=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="--nproc 2: give N >= 2, outside torchrun"):
        train(breasts, [20.0], tmp_path / "m.dcmcr", cache, nproc=2)
    assert not cache.exists()
