"""`dicomcr report` says what the results are: the held-out test set of `run.evaluate` (the
demo's results folder) without a word of folds, a cross-validation with its folds."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.dataset import load_dataset
from dicomcr.experiments import cv as cvlib
from dicomcr.experiments.run import evaluate
from dicomcr.models import CNN3, CNN3Spec
from dicomcr.models.modelfile import ModelInfo, save_model
from dicomcr.phantom import CohortSpec, write_cohort
from dicomcr.phantom.params import CohortMix

runner = CliRunner()
# The small phantom's views fit this canvas; 64 x 64 keeps the network tiny.
PREPROCESSING = {"scale": 0.3, "crop_fraction_y": 0.2, "mirror_right": True,
                 "canvas": [246, 250], "input_size": [64, 64]}


def _prose(folder: Path) -> str:
    """`dicomcr report FOLDER`'s page as text, without the Parameters block (results.json's raw
    meta, folds count included) and the markup."""
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    page = (folder / "report.html").read_text()
    page = re.sub(r"<pre>.*?</pre>|<style>.*?</style>", "", page, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder as the demo writes it: a model file tested once on held-out studies (two
    of them malignant, so that every interval exists) at CR 1 and 20."""
    root = tmp_path_factory.mktemp("held-out")
    cohort = root / "cohort"
    write_cohort(CohortSpec(n_studies=4, seed=11, size="small", mix=CohortMix(0.5, 0.0, 0.5)),
                 cohort, workers=1)
    torch.manual_seed(0)
    spec = CNN3Spec(channels=(4, 8, 8), hidden=(16, 8), input_size=(64, 64))
    model = root / "cnn3-cr20.dcmcr"
    save_model(CNN3(spec), ModelInfo(architecture="cnn3", spec=spec.as_dict(),
                                     preprocessing=PREPROCESSING, trained_crs=[20.0],
                                     data_fingerprint="x", threshold=0.5), model)
    return evaluate(model, load_dataset(cohort).breasts, [1.0, 20.0], cohort / ".dicomcr-cache",
                    out=root / "results", source=str(cohort)).folder


def test_a_held_out_report_speaks_of_the_held_out_test_set(held_out: Path) -> None:
    text = _prose(held_out)
    assert "dicomcr held-out test: cnn3" in text
    assert "the held-out test set, on which the model file" in text and "cnn3-cr20.dcmcr" in text
    assert "on its predictions on the held-out test set" in text
    assert "Table 1: the model tested at the CR it was trained at" in text
    assert "DeLong's paired test on the same breasts of the held-out test set" in text
    assert "against every non-malignant breast, on the held-out test set" in text
    words = text.replace(str(held_out.parent), "")  # its own folder's name may say anything
    assert "fold" not in words.lower(), text  # no folds, no out-of-fold, no fold mean ± sd


def test_a_cv_report_keeps_its_folds(tmp_path: Path) -> None:
    """A cross-validation's folder (two folds of M-CR1 and M-CR20 at CR 1 and 20, written by the
    same functions as `dicomcr cv`) is reported as before."""
    rng = np.random.default_rng(0)
    labels = [1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0]
    keys = [f"p{i}/L" for i in range(len(labels))]
    plans = cvlib.plan_models([1, 20], cross=True)
    half = len(keys) // 2
    results = [cvlib.FoldResult(plan.name, k, tuple(keys[part]), tuple(labels[part]),
                                {f"{c:g}": list(rng.random(half)) for c in plan.test_crs},
                                1, 0.5, 0.5, "fixed", [], "x")
               for plan in plans for k, part in enumerate((slice(0, half), slice(half, None)))]
    out = tmp_path / "cv"
    cvlib.write_tables(out, cvlib.summarise(plans, results, seed=0), results, {
        "data": "cohort", "data_fingerprint": "x", "architecture": "cnn3", "folds": 2,
        "crs": [1.0, 20.0], "cross": True, "augment": False, "breasts": len(keys),
        "patients": len(keys), "malignant": sum(labels)})
    text = _prose(out)
    assert "dicomcr cross-validation: cnn3" in text
    assert "2 folds split by patient" in text
    assert "on the pooled out-of-fold predictions; fold mean ± sd beside them" in text
    assert "Table 1: each model trained and tested at one CR" in text
    assert text.count("fold mean ± sd") == 3  # the sentence and Table 1's two columns
    assert "held-out" not in text


def test_a_detectability_folder_gets_its_own_page(tmp_path: Path) -> None:
    """`dicomcr report` on the committed full run: the method in two sentences, the figures, and
    the verdict of each finding x size x pitch at every CR; a cv folder is still a cv page."""
    from dicomcr.observers import FindingType, load_results

    folder = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "detectability"
    out = tmp_path / "page.html"
    result = runner.invoke(app, ["report", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()) == f"report: {out}"
    page = out.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2  # d' against CR, and the example ROIs
    text = " ".join(html.unescape(re.sub(r"<pre>.*?</pre>|<style>.*?</style>|<[^>]+>", " ", page,
                                         flags=re.S)).split())
    assert text.count("Lesions of each finding type were inserted") == 1
    assert "lost when the upper 95 % bound of the paired change of d′ against CR 1" in text
    results = load_results(folder)
    crs = [c for c in results.spec.crs if c != 1.0]
    for vendor in ("Selenia Dimensions", "Senographe DS"):
        assert f"{vendor}: the change of d′ against CR 1 (paired, same ROIs) and its verdict" in text
    header = "finding pitch observer d′ at CR 1 " + " ".join(
        f"CR {c / 1000:g}K" if c >= 1000 else f"CR {c:g}" for c in crs)
    assert text.count(header) == 2
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(detector|CNN \(30 %\)) ([\d.]+) mm</td>", page)
    # both vendors x every finding type x two sizes x two pitches
    assert len(rows) == 2 * len(FindingType) * 2 * 2
    # the smallest Hologic cluster at its detector's pitch: lost at 1K (docs/experiments' README)
    row = re.search(r"<tr><td>calcification cluster 0.23 mm</td><td>detector 0.07 mm</td>(.*?)</tr>",
                    page).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    verdicts = [re.sub(r"<[^>]+>", " ", c).split()[-1] for c in cells[2:]]
    assert verdicts[crs.index(1000.0)] == "lost" and verdicts[crs.index(15.0)] == "kept"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text('{"spec": {"findings": ["cyst"]}, "rows": []}')
    refused = runner.invoke(app, ["report", str(bad)])
    assert refused.exit_code == 2 and "unknown finding type 'cyst'" in refused.output
