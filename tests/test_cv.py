"""Cross-validation: folds, the experiment plan, resumable runs, outputs checked against sklearn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.dataset import read_phantom_labels
from dicomcr.experiments.cv import (
    FoldResult,
    cv_folds,
    findings_note,
    fold_minimum,
    plan_models,
    summarise,
    summarise_findings,
)
from dicomcr.experiments.metrics import auroc_delong, delong_paired
from dicomcr.experiments.paper import TABLE1_CNN3, TABLE2_MCR1
from dicomcr.experiments.report import auroc_cr_panels
from dicomcr.experiments.saliency import energy_inside, pointing_game, wilson
from dicomcr.models.modelfile import load_model
from dicomcr.phantom import CohortSpec, write_cohort

runner = CliRunner()


def test_delong_on_a_hand_checked_case() -> None:
    # Positives 0.9, 0.8, 0.4 against negatives 0.7, 0.3, 0.2: 8 of 9 pairs ordered, AUROC 8/9.
    # Structural components: positives 1, 1, 2/3; negatives 2/3, 1, 1; each sample variance 1/27,
    # so var = (1/27)/3 + (1/27)/3 = 2/81, SE = sqrt(2)/9, and 1.959964 * SE = 0.307979.
    estimate = auroc_delong(np.array([1, 1, 1, 0, 0, 0]), np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2]))
    assert estimate.value == pytest.approx(8 / 9)
    assert estimate.low == pytest.approx(8 / 9 - 0.307979, abs=1e-6)
    assert estimate.high == 1.0  # 1.197 clipped


def test_saliency_scores_on_known_maps() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:8, 5:8] = True
    cam = np.zeros((20, 20))
    cam[6, 6], cam[15, 15] = 1.0, 0.5
    assert pointing_game(cam, mask) and energy_inside(cam, mask) == pytest.approx(1 / 1.5)
    cam[9, 9] = 2.0  # the maximum two pixels off the lesion: a hit with tolerance 2 only
    assert pointing_game(cam, mask, tolerance=2) and not pointing_game(cam, mask, tolerance=0)
    low, high = wilson(8, 10)  # hand-checked: 0.4902-0.9433
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_folds_are_by_patient_stratified_complete_and_seeded() -> None:
    patients = [f"p{i}" for i in range(50) for _ in range(2)]
    labels = [int(i % 5 == 0 and side == 1) for i in range(50) for side in range(2)]
    folds = cv_folds(patients, labels, 5, seed=4)
    assert [f.index for f in folds] == list(range(5))
    tested = [p for f in folds for p in f.test]
    assert sorted(tested) == sorted(set(patients))  # every patient tested exactly once
    positives = {p for p, y in zip(patients, labels, strict=True) if y}
    for f in folds:
        assert not (f.train & f.validation or f.train & f.test or f.validation & f.test)
        assert f.train | f.validation | f.test == set(patients)
        assert len(f.test & positives) == 2 and len(f.test) == 10
        assert len(f.validation) == 5 and len(f.validation & positives) == 1  # 7:1:2
    assert cv_folds(patients, labels, 5, seed=4) == folds
    assert cv_folds(patients, labels, 5, seed=5) != folds
    with pytest.raises(ValueError) as refused:
        cv_folds(patients[:8], [0, 1] * 4, 5, seed=0)
    assert str(refused.value) == (
        "too few patients: 5-fold cross-validation (each fold's training, validation and test "
        "need both) needs at least 5 patients with a malignant breast and 5 without; the data "
        "have 4 and 0")  # four patients, each with a cancer in one breast


def test_every_fold_trains_and_validates_on_both_classes_or_is_refused() -> None:
    """Two folds of 3 patients of a class leave a fold's training side without one: 4 needed,
    said before any work; at the minimum every fold's sides hold both classes."""
    assert [fold_minimum(k) for k in (2, 3, 5, 10)] == [4, 3, 5, 10]
    for k in (2, 3, 5):
        n = fold_minimum(k)
        patients = [f"p{i}" for i in range(2 * n)]
        labels = [int(i < n) for i in range(2 * n)]
        for fold in cv_folds(patients, labels, k, seed=1):
            for side in (fold.train, fold.validation, fold.test):
                assert {labels[patients.index(p)] for p in side} == {0, 1}, (k, fold)
    with pytest.raises(ValueError, match="at least 4 patients with a malignant breast"):
        cv_folds([f"p{i}" for i in range(6)], [1, 1, 1, 0, 0, 0], 2, seed=0)
    with pytest.raises(ValueError, match="the data have 0 and 10"):
        cv_folds([f"p{i}" for i in range(10)], [0] * 10, 5, seed=0)  # no cancer at all


def test_the_plan_names_the_papers_models() -> None:
    table1 = plan_models([1, 20, 11000])
    assert [(p.name, p.train_crs, p.test_crs) for p in table1] == [
        ("M-CR1", (1.0,), (1.0,)), ("M-CR20", (20.0,), (20.0,)),
        ("M-CR11000", (11000.0,), (11000.0,))]
    cross = plan_models([1, 20, 11000], cross=True)
    assert all(p.test_crs == (1.0, 20.0, 11000.0) for p in cross)
    augment = plan_models([1, 20, 11000], augment=True)
    assert [(p.name, p.train_crs) for p in augment[3:]] == [
        ("M-CR1-20", (1.0, 20.0)), ("M-CR1-11000", (1.0, 20.0, 11000.0))]
    with pytest.raises(ValueError, match="give CR 1"):
        plan_models([15, 20], augment=True)


def _folds(plans, probabilities, labels: list[int], keys: list[str]) -> list[FoldResult]:
    """Two folds per plan over the same breasts: `probabilities(plan, cr)` gives one per key."""
    half = len(keys) // 2
    return [FoldResult(plan.name, k, tuple(keys[part]), tuple(labels[part]),
                       {f"{c:g}": list(probabilities(plan, c)[part]) for c in plan.test_crs},
                       1, 0.5, 0.5, "fixed", [], "x")
            for plan in plans for k, part in enumerate((slice(0, half), slice(half, None)))]


def test_paired_tests_and_findings_from_fold_results() -> None:
    rng = np.random.default_rng(0)
    labels = [1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0]
    keys = [f"p{i}/L" for i in range(len(labels))]
    finding_of = dict(zip(keys, ["mass", "normal", "calcification", "calcification", "mass", "mass",
                                 "normal", "normal", "mass_calcification", "normal", "mass",
                                 "normal", "normal", "calcification", "normal", "normal"],
                             strict=True))
    scores = {(name, c): rng.random(len(keys)) for name in ("M-CR1", "M-CR20") for c in (1, 20)}

    def probabilities(plan, c):
        return scores[plan.name, c]

    y = np.array(labels)
    table1 = plan_models([1, 20])  # each model at its own CR: M-CR20 at 20 against M-CR1 at 1
    rows = {(r.model, r.test_cr): r
            for r in summarise(table1, _folds(table1, probabilities, labels, keys), seed=0)}
    expected = delong_paired(y, scores["M-CR20", 20], scores["M-CR1", 1])
    assert rows["M-CR20", 20].vs_mcr1_diff == pytest.approx(expected.difference.value)
    assert rows["M-CR20", 20].vs_mcr1_p == pytest.approx(expected.p_value)
    assert all(r.vs_cr1_diff is None for r in rows.values())  # no model tested at 1 and 20
    assert rows["M-CR1", 1].vs_mcr1_diff is None
    cross = plan_models([1, 20], cross=True)
    results = _folds(cross, probabilities, labels, keys)
    rows = {(r.model, r.test_cr): r for r in summarise(cross, results, seed=0)}
    expected = delong_paired(y, scores["M-CR20", 20], scores["M-CR1", 1])
    got = rows["M-CR20", 20]
    assert (got.vs_mcr1_diff, got.vs_mcr1_diff_low, got.vs_mcr1_diff_high, got.vs_mcr1_p) == \
        pytest.approx((expected.difference.value, expected.difference.low,
                       expected.difference.high, expected.p_value))
    assert got.vs_cr1_diff == pytest.approx(roc_auc_score(y, scores["M-CR20", 20])
                                            - roc_auc_score(y, scores["M-CR20", 1]))
    assert rows["M-CR1", 1].vs_mcr1_diff is None and rows["M-CR1", 1].vs_cr1_diff is None
    assert rows["M-CR1", 20].vs_mcr1_diff is None and rows["M-CR1", 20].vs_cr1_p is not None

    found = summarise_findings(cross, results, finding_of)
    # mass_calcification has one malignant breast: left out; the benign mass is a negative
    assert {r.finding for r in found} == {"mass", "calcification"} and len(found) == 2 * 2 * 2
    for r in found:
        keep = (y == 0) | np.array([finding_of[k] == r.finding for k in keys])
        assert r.auroc == pytest.approx(roc_auc_score(y[keep], scores[r.model, r.test_cr][keep]))
        assert (r.positives, r.negatives) == (int(y[keep].sum()), int((y == 0).sum()))
    unknown = dict.fromkeys(keys)
    assert summarise_findings(cross, results, unknown) == []
    assert "carry no finding types" in findings_note([], unknown)
    assert findings_note(found, finding_of) == ""

    # AUROC against CR: each model at its own CR and M-CR1 at every CR, beside the paper's CNN3
    panels = auroc_cr_panels(list(rows.values()))
    (own, paper_own), (reference, paper_reference) = panels.values()
    assert {(r.model, r.test_cr) for r in own} == {("M-CR1", 1), ("M-CR20", 20)}
    assert {(r.model, r.test_cr) for r in reference} == {("M-CR1", 1), ("M-CR1", 20)}
    assert paper_own == TABLE1_CNN3 and paper_reference == TABLE2_MCR1
    assert [p.auroc for p in TABLE2_MCR1 if p.cr in (1, 5000, 10000, 11000)] == \
        [0.87, 0.84, 0.73, 0.71]  # the paper's Table 2 (a), row M-CR1
    assert all(paper == () for _, paper in auroc_cr_panels(list(rows.values()),
                                                           "resnet18").values())
    assert auroc_cr_panels([rows["M-CR1", 1]]) == {}  # one point: no figure


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cv-cohort")
    write_cohort(CohortSpec(n_studies=20, seed=5, size="small", vendor="ge"), out)
    return out


def _cv(cohort: Path, out: Path, *extra: str):
    return runner.invoke(app, ["cv", str(cohort), "--cr", "1", "--cr", "20", "--folds", "3",
                               "--epochs", "1",
                               "--input-size", "64", "--batch-size", "8", "--seed", "2",
                               "--workers", "1", "--out", str(out), *extra])


def test_cv_writes_tables_figures_and_resumes(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    first = _cv(cohort, out, "--cross", "--augment", "--saliency")
    assert first.exit_code == 0, first.output
    assert "Table 1" in first.output and "M-CR1-20" in first.output
    with open(out / "saliency.csv", newline="") as handle:
        scored = list(csv.DictReader(handle))
    malignant = sum(b.malignant for b in read_phantom_labels(cohort))
    assert [r["model"] for r in scored] == ["M-CR1", "M-CR20"]
    for r in scored:
        assert int(r["n"]) == malignant  # every malignant breast has its mask in the phantom
        assert 0 <= float(r["pointing_low"]) <= float(r["pointing_rate"]) <= 1
        assert 0 <= float(r["energy_mean"]) <= 1
    _, info = load_model(out / "folds" / "M-CR1-20" / "fold2.dcmcr")
    assert info.trained_crs == [1.0, 20.0] and info.validation["fold"] == 2
    assert 0 < info.threshold < 1 and info.validation["threshold_rule"]  # every fold's network
    document = json.loads((out / "results.json").read_text())
    assert document["folds"]["M-CR1-20"]["2"]["threshold"] == info.threshold
    for name in ("results.csv", "results.json", "predictions.csv", "findings.csv",
                 "fig2_roc_pr.png", "table2_auroc.png", "table2_auprc.png", "fig4_augment.png",
                 "fig_findings.png", "fig_auroc_cr.png"):
        assert (out / name).stat().st_size > 0, name
    assert "AUROC minus M-CR1's" in first.output  # the paired tests and the findings, printed
    assert "AUROC of each malignant finding type" in first.output
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["model"], r["test_cr"]) for r in rows} == {
        (m, c) for m in ("M-CR1", "M-CR20", "M-CR1-20") for c in ("1", "20")}
    with open(out / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert len({p["breast"] for p in predictions}) == 40  # every breast, out of fold
    finding = {b.key: b.finding.value for b in read_phantom_labels(cohort)}
    assert all(p["finding"] == finding[p["breast"]] for p in predictions)

    def pooled(model: str, cr: str, finding: str = "") -> tuple[np.ndarray, np.ndarray]:
        mine = [p for p in predictions if p["model"] == model and p["test_cr"] == cr
                and (not finding or p["malignant"] == "0" or p["finding"] == finding)]
        return (np.array([int(p["malignant"]) for p in mine]),
                np.array([float(p["probability"]) for p in mine]))

    auroc = {(r["model"], r["test_cr"]): roc_auc_score(*pooled(r["model"], r["test_cr"]))
             for r in rows}
    for row in rows:  # the pooled metrics are those of the out-of-fold predictions
        y, s = pooled(row["model"], row["test_cr"])
        assert len(y) == 40 == int(row["n"])
        assert float(row["auroc"]) == pytest.approx(roc_auc_score(y, s), abs=1e-4)
        assert float(row["auprc"]) == pytest.approx(average_precision_score(y, s), abs=1e-4)
        assert float(row["auroc_low"]) <= float(row["auroc"]) <= float(row["auroc_high"])
        for prefix, other in (("vs_mcr1", ("M-CR1", "1")),
                              ("vs_cr1", (row["model"], "1"))):  # paired tests, same breasts
            diff, low, high, p = (row[f"{prefix}_{k}"] for k in ("diff", "diff_low",
                                                                 "diff_high", "p"))
            if (row["model"], row["test_cr"]) == other or (  # CR 1 itself, or M-CR1's rows
                    prefix == "vs_mcr1" and row["model"] == "M-CR1"):
                assert diff == low == high == p == "", row
                continue
            assert float(diff) == pytest.approx(auroc[row["model"], row["test_cr"]]
                                                - auroc[other], abs=1e-4)
            assert float(low) <= float(diff) <= float(high) and 0 <= float(p) <= 1
    assert all(r["vs_mcr1_diff"] == "" for r in rows if r["model"] == "M-CR1")
    with open(out / "findings.csv", newline="") as handle:
        findings = list(csv.DictReader(handle))
    malignant_of = {}
    for b in read_phantom_labels(cohort):
        malignant_of[b.finding.value] = malignant_of.get(b.finding.value, 0) + b.malignant
    kinds = {f for f, n in malignant_of.items() if n >= 2}  # types with two cancers or more
    assert kinds and {(r["model"], r["test_cr"], r["finding"]) for r in findings} == {
        (r["model"], r["test_cr"], f) for r in rows for f in kinds}
    for row in findings:  # each type's cancers against every non-malignant breast
        y, s = pooled(row["model"], row["test_cr"], row["finding"])
        assert int(row["positives"]) == y.sum() == malignant_of[row["finding"]]
        assert int(row["negatives"]) == (y == 0).sum()
        assert float(row["auroc"]) == pytest.approx(roc_auc_score(y, s), abs=1e-4)
        assert float(row["auroc_low"]) <= float(row["auroc"]) <= float(row["auroc_high"])
    document = json.loads((out / "results.json").read_text())
    assert document["meta"]["folds"] == 3 and len(document["folds"]["M-CR20"]) == 3
    assert len(document["findings"]) == len(findings) and document["findings_note"] == ""
    assert {"vs_mcr1_diff", "vs_mcr1_p", "vs_cr1_diff"} <= set(document["rows"][0])

    table = (out / "results.csv").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "folds").rglob("*.json")}
    assert len(stamps) == 3 * 3
    again = _cv(cohort, out, "--cross", "--augment")
    assert again.exit_code == 0, again.output
    assert "9 fold(s) were finished before and reused" in again.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "results.csv").read_text() == table  # the same numbers from the same folds

    changed = _cv(cohort, out, "--cross", "--augment", "--seed", "3")  # other inputs: recomputed
    assert changed.exit_code == 0 and "reused" not in changed.output

    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    page = (out / "report.html").read_text()
    assert "Table 1" in page and "Table 2" in page and "Figure 4" in page
    assert "Paired tests" in page and "Per finding type" in page
    assert page.count("data:image/png;base64,") == 6 and "pointing game" not in page  # rerun
    assert "http://" not in page and "https://" not in page  # viewable offline


def test_a_results_folder_describes_one_run(cohort: Path, tmp_path: Path) -> None:
    """Issue 16, items 8 and 9: a CR beyond the small images' reach is skipped with one line
    and the run goes on; files an earlier run left in the folder (saliency.csv, Fig. 4, Table
    2's heat maps, the report) are removed and named, and the report shows this run's only."""
    out = tmp_path / "results"
    first = _cv(cohort, out, "--saliency", "--cr", "11000")
    assert first.exit_code == 0, first.output
    said = " ".join(first.output.split())
    assert "CR 11000 skipped: out of reach for some of this dataset's images" in said
    document = json.loads((out / "results.json").read_text())
    assert document["meta"]["crs"] == [1.0, 20.0] and document["meta"]["crs_skipped"] == [11000.0]
    assert "saliency.csv" in document["files"] and (out / "saliency.csv").is_file()
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert "pointing game" in (out / "report.html").read_text()

    augmented = _cv(cohort, out, "--augment")
    assert augmented.exit_code == 0, augmented.output
    said = " ".join(augmented.output.split())
    assert (f"removed from {out}, left by an earlier run and not part of this one: saliency.csv, "
            "report.html") in said
    assert not (out / "saliency.csv").exists() and (out / "fig4_augment.png").is_file()
    document = json.loads((out / "results.json").read_text())
    assert document["saliency"] == [] and "fig4_augment.png" in document["files"]

    plain = _cv(cohort, out)
    assert plain.exit_code == 0, plain.output
    assert ("not part of this one: table2_auroc.png, table2_auprc.png, fig4_augment.png"
            in " ".join(plain.output.split()))
    assert not (out / "fig4_augment.png").exists()
    (out / "fig4_augment.png").write_bytes((out / "fig2_roc_pr.png").read_bytes())  # by hand
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    page = (out / "report.html").read_text()
    assert "Figure 4" not in page and "pointing game" not in page  # not this run's
    assert page.count("data:image/png;base64,") == 3  # Fig. 2, AUROC against CR, findings
    assert "AUROC against CR, beside the paper's" in page
    assert "CR 11000 skipped" not in page  # the last run did not ask for it
    names = {p.name for p in out.iterdir() if p.is_file()}
    assert names - {"fig4_augment.png"} == set(json.loads((out / "results.json").read_text())
                                               ["files"]) | {"report.html"}


def test_cv_and_report_refuse_bad_input(cohort: Path, tmp_path: Path) -> None:
    bad = _cv(cohort, tmp_path / "r", "--folds", "30")
    assert bad.exit_code == 2 and "30-fold cross-validation" in bad.output
    (tmp_path / "afile").write_text("")
    bad = _cv(cohort, tmp_path / "afile")
    assert bad.exit_code == 2 and f"{tmp_path / 'afile'} exists and is not a folder" in bad.output
    bad = runner.invoke(app, ["cv", str(cohort), "--cr", "15,20", "--augment", "--out",
                              str(tmp_path / "r")])
    assert bad.exit_code == 2 and "give CR 1" in bad.output
    bad = runner.invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "no results.json" in bad.output
    (tmp_path / "results.json").write_text("{not json")
    bad = runner.invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "damaged" in bad.output
