"""Model observers (issue 22): validated as an expert would demand.

- On white Gaussian noise with a known signal, the NPW reproduces the analytic d' = ||s|| / sigma
  and the CHO its analytic d' (from the channel matrix) within their 95 % CIs.
- In uncompressed images d' rises with the lesion's contrast and with its size.
- CR 1 gives a paired difference of exactly zero.
- The observers are unchanged by a constant offset of the image.
- Bad input (an unknown finding type, a CR the view cannot reach, an output folder that cannot be
  written) is one clear error, and loses no finished work; a run resumes from its view files.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from dicomcr.codec.j2k import CODEC_REVISION
from dicomcr.data.preprocess import normalise, resize_and_crop
from dicomcr.observers import (
    DetectabilityError,
    DetectabilityRow,
    DetectabilitySpec,
    FindingType,
    ObserverKind,
    Pitch,
    Verdict,
    VerdictRule,
    channels,
    load_results,
    run_detectability,
    site_detectability,
    stats,
    verdict,
)
from dicomcr.observers.geometry import LATERALITY, PREPROCESSING, VIEW, Grid
from dicomcr.observers.lesions import LesionClass, size_distribution
from dicomcr.phantom.params import DETECTORS

SIDE = 25  # white-noise ROIs: small and fast
TRIALS = 20


def _gaussian(side: int, sigma: float, amplitude: float, shift: tuple[int, int] = (0, 0)
              ) -> np.ndarray:
    half = side // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    return amplitude * np.exp(-((x - shift[1]) ** 2 + (y - shift[0]) ** 2) / (2 * sigma**2))


def _white_noise_trials(signal: np.ndarray, template: np.ndarray, trained: bool,
                        pairs: int = 100) -> list[stats.Estimate]:
    """d' estimates on independent white-noise trials (sigma 1), paired as the experiment's
    pairs are: the same noise with and without the signal."""
    out = []
    for trial in range(TRIALS):
        rng = np.random.default_rng(trial)
        absent = rng.standard_normal((pairs, signal.size))
        present = absent + signal.ravel()
        resampling = stats.Resampling.draw(pairs, 4, 300, 1000 + trial)
        f1, f0 = present @ template, absent @ template
        replicates = (stats.hotelling_dprimes(f1, f0, resampling) if trained
                      else stats.fixed_dprimes(f1[:, 0], f0[:, 0], resampling))
        out.append(stats.estimate(replicates, resampling))
    return out


def _covers(estimates: list[stats.Estimate], truth: float) -> int:
    return sum(e.low <= truth <= e.high for e in estimates)


def test_npw_reproduces_the_analytic_dprime_on_white_noise() -> None:
    signal = _gaussian(SIDE, 2.0, 0.35)
    truth = float(np.linalg.norm(signal))  # ||s|| / sigma, sigma = 1
    found = _white_noise_trials(signal, channels.npwe(signal, eye=None), trained=False)
    # a 95 % interval holds the truth in 19 of 20 trials on average; 16 or fewer has p < 2 %
    assert _covers(found, truth) >= 17, [(e.low, e.high) for e in found]
    assert np.mean([e.value for e in found]) == pytest.approx(truth, rel=0.05)


def test_cho_reproduces_its_analytic_dprime_on_white_noise() -> None:
    # an off-centre signal: the LG channels (centred) capture only part of it, so the CHO's
    # analytic d' is below the NPW's, and computable from the channel matrix alone
    signal = _gaussian(SIDE, 2.0, 0.5, shift=(2, 1))
    u = channels.laguerre_gauss(SIDE, width_px=6.0)
    dv = u.T @ signal.ravel()
    truth = float(np.sqrt(dv @ np.linalg.solve(u.T @ u, dv)))  # K = sigma^2 U^T U, sigma = 1
    assert truth < 0.95 * np.linalg.norm(signal)
    found = _white_noise_trials(signal, u, trained=True)
    assert _covers(found, truth) >= 17, [(e.low, e.high) for e in found]
    assert np.mean([e.value for e in found]) == pytest.approx(truth, rel=0.08)


def test_observers_are_unchanged_by_a_constant_offset() -> None:
    rng = np.random.default_rng(3)
    signal = _gaussian(SIDE, 1.5, 1.5)
    absent = rng.standard_normal((60, SIDE, SIDE)) * 2.0 + 1000.0
    present = absent + signal
    resampling = stats.Resampling.draw(60, 3, 100, 5)
    for matrix, trained in ((channels.difference_of_gaussians(signal, 0.1), True),
                            (channels.convolutional_lg(signal, 3.0), True),
                            (channels.npwe(signal), False)):
        def dprimes(offset: float, matrix: np.ndarray = matrix, trained: bool = trained
                    ) -> np.ndarray:
            f1 = (present + offset).reshape(60, -1) @ matrix
            f0 = (absent + offset).reshape(60, -1) @ matrix
            return (stats.hotelling_dprimes(f1, f0, resampling) if trained
                    else stats.fixed_dprimes(f1[:, 0], f0[:, 0], resampling))

        base = dprimes(0.0)
        assert np.all(np.isfinite(base)) and base[0] > 1.0
        np.testing.assert_allclose(dprimes(-850.0), base, rtol=1e-6)
        np.testing.assert_allclose(dprimes(5000.0), base, rtol=1e-6)


def test_a_cr_against_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    features = rng.standard_normal((40, 2, 5)) + np.array([0.0, 0.7])[None, :, None]
    resampling = stats.Resampling.draw(40, 3, 200, 2)
    replicates = stats.hotelling_dprimes(features[:, 1], features[:, 0], resampling)
    delta, relative = stats.paired_difference(replicates, replicates.copy(), resampling)
    assert (delta.value, delta.low, delta.high) == (0.0, 0.0, 0.0)
    assert (relative.value, relative.low, relative.high) == (0.0, 0.0, 0.0)


def test_sizes_come_from_the_phantom_and_share_one_instance() -> None:
    sizes = size_distribution(FindingType.SPICULATED_MASS)
    small, large = (LesionClass(FindingType.SPICULATED_MASS, q, 1.0, 7) for q in (0.25, 0.75))
    assert sizes.min() <= small.size_mm < large.size_mm <= sizes.max()
    assert small.instance.radius_mm == pytest.approx(small.size_mm / 2)
    assert small.instance.aspect == large.instance.aspect  # the same lesion, another size
    cluster = LesionClass(FindingType.CALCIFICATION_CLUSTER, 0.5, 1.0, 7)
    assert {c.size_mm for c in cluster.instance.calcifications} == {cluster.size_mm}


def test_the_paper_pitch_is_the_cnns_input() -> None:
    """ROIs at the paper's pitch come from exactly the image the CNN is given."""
    detector = DETECTORS["ge"]
    pixels = np.random.default_rng(0).integers(0, 1 << detector.bits_stored,
                                               (detector.rows, detector.columns), dtype=np.uint16)
    grid = Grid.of("ge", Pitch.PAPER)
    expected = resize_and_crop(normalise(pixels, detector.bits_stored, "MONOCHROME2", (8000, 6000)),
                               LATERALITY, VIEW, PREPROCESSING)
    np.testing.assert_array_equal(grid.image(pixels, detector.bits_stored, (8000, 6000)), expected)
    assert grid.pitch_mm == pytest.approx(detector.pixel_spacing_mm / 0.3, rel=0.01)


def _same(first: object, second: object) -> None:
    """Equal, NaN included (a d' that no pair could estimate is NaN in both)."""
    np.testing.assert_equal([asdict(r) for r in first], [asdict(r) for r in second])


def _row(**values: float) -> DetectabilityRow:
    base = dict(vendor="ge", finding=FindingType.SPICULATED_MASS, size_quantile=0.5, size_mm=14.0,
                contrast=1.0, cr=5000.0, achieved_cr=5010.0, pitch=Pitch.DETECTOR, pitch_mm=0.1,
                observer=ObserverKind.NPWE, pairs=100, dprime=1.0, dprime_low=0.8, dprime_high=1.2,
                auc=0.76, auc_low=0.71, auc_high=0.8, dprime_cr1=3.0, dprime_cr1_low=2.6,
                dprime_cr1_high=3.4, delta_dprime=-2.0, delta_low=-2.4, delta_high=-1.6,
                delta_pct=-66.0, delta_pct_low=-75.0, delta_pct_high=-55.0)
    return DetectabilityRow(**{**base, **values})


def test_the_verdict_rule() -> None:
    assert verdict(_row()) is Verdict.LOST
    assert verdict(_row(delta_pct_high=-20.0)) is Verdict.DEGRADED
    assert verdict(_row(delta_pct_low=-30.0, delta_pct_high=4.0)) is Verdict.KEPT
    assert verdict(_row(dprime_cr1_low=-0.1)) is Verdict.NOT_SEEN
    assert verdict(_row(delta_pct_high=-20.0), VerdictRule(lost_pct=15.0)) is Verdict.LOST
    with pytest.raises(ValueError):
        VerdictRule(lost_pct=10.0, degraded_pct=20.0)


def test_dprime_rises_with_contrast_and_size(tmp_path: Path) -> None:
    spec = DetectabilitySpec(findings=(FindingType.CALCIFICATION_CLUSTER,), size_quantiles=(0.1, 0.9),
                             contrasts=(0.5, 1.0), crs=(1,), vendors=("ge",), pitches=(Pitch.DETECTOR,),
                             observers=(ObserverKind.NPWE, ObserverKind.CHO_DOG), pairs=30,
                             splits=2, bootstrap=50, seed=3)
    results = run_detectability(spec, tmp_path / "out", workers=1)
    for observer in (ObserverKind.NPWE, ObserverKind.CHO_DOG):
        def d(quantile: float, contrast: float, observer: ObserverKind = observer) -> float:
            return results.row("ge", FindingType.CALCIFICATION_CLUSTER, quantile, 1.0,
                               Pitch.DETECTOR, observer, contrast).dprime

        assert d(0.9, 1.0) > d(0.1, 1.0) > 0, observer  # bigger: more visible
        assert d(0.9, 1.0) > d(0.9, 0.5), observer  # more contrast: more visible
        assert d(0.1, 1.0) > d(0.1, 0.5), observer


SMALL = DetectabilitySpec(findings=("calcification_cluster", "circumscribed_mass"), size_quantiles=(0.25,),
                          crs=(1, 5000), vendors=("ge",), pairs=16, splits=2, bootstrap=60, seed=5)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One end-to-end run on a reduced spec (GE views, CR 1 and 5000), in two processes."""
    out = tmp_path_factory.mktemp("detectability")
    seen: list[tuple[int, int]] = []
    run_detectability(SMALL, out, workers=2, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]
    return out


def test_a_run_writes_rows_figures_and_views(small_run: Path) -> None:
    results = load_results(small_run)
    assert results.spec == SMALL
    assert {f.name for f in small_run.iterdir()} >= {"results.csv", "results.json", "views",
                                                      "fig_dprime_cr.png", "fig_rois.png"}
    # one row per finding x size x CR x pitch x observer (one vendor, one contrast)
    assert len(results.rows) == 2 * 1 * 2 * 2 * 3
    with open(small_run / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(results.rows)
    for column in ("cr", "finding", "pitch_mm", "observer", "dprime", "dprime_low", "dprime_high",
                   "auc", "auc_low", "auc_high", "delta_dprime", "delta_low", "delta_high",
                   "delta_pct", "delta_pct_low", "delta_pct_high"):
        assert column in table[0]
    for row in results.rows:
        assert row.pairs == 16
        assert row.auc == pytest.approx(0.5 * math.erfc(-row.dprime / 2.0), abs=1e-9)
        if row.cr == 1.0:  # the paired difference of CR 1 against itself
            assert (row.delta_dprime, row.delta_low, row.delta_high) == (0.0, 0.0, 0.0)
            assert row.dprime == row.dprime_cr1
        else:
            assert row.achieved_cr == pytest.approx(5000, rel=0.1)
            assert row.delta_dprime == pytest.approx(row.dprime - row.dprime_cr1)
    mass = results.row("ge", "circumscribed_mass", 0.25, 1.0, "detector", "npwe")
    assert mass.dprime_low > 1.0  # a 1 cm mass is plainly seen uncompressed
    meta = json.loads((small_run / "results.json").read_text())["meta"]
    assert meta["codec_revision"] == CODEC_REVISION


def test_a_rerun_reuses_finished_views(small_run: Path) -> None:
    before = load_results(small_run).rows
    (small_run / "results.json").unlink()
    views = sorted((small_run / "views").glob("*.npz"))
    views[-1].unlink()  # as if the run had been killed before its last view
    rerun = run_detectability(SMALL, small_run, workers=1)
    assert rerun.meta["views_measured"] == 1
    _same(rerun.rows, before)  # the same pairs, the same resamples: the same numbers
    again = run_detectability(SMALL, small_run, workers=1)  # finished: read, not computed
    _same(again.rows, before)
    assert again.meta["views_measured"] == 1


def test_bad_input_is_one_line_and_loses_nothing(small_run: Path, tmp_path: Path) -> None:
    files = {p: p.stat().st_mtime_ns for p in small_run.rglob("*") if p.is_file()}
    cases = {
        "unknown finding type 'lump'": lambda: replace(SMALL, findings=("lump",)),
        "out of reach": lambda: replace(SMALL, crs=(1, 50000)),
        "must be >= 1": lambda: replace(SMALL, crs=(0.5,)),
        "unknown vendor": lambda: replace(SMALL, vendors=("siemens",)),
    }
    for words, make in cases.items():
        with pytest.raises(DetectabilityError) as caught:
            run_detectability(make(), small_run)
        assert words in str(caught.value) and "\n" not in str(caught.value)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DetectabilityError) as caught:
        run_detectability(SMALL, blocker / "out")
    assert "\n" not in str(caught.value)
    assert {p: p.stat().st_mtime_ns for p in small_run.rglob("*") if p.is_file()} == files


def test_site_detectability_is_cached_by_cr_and_geometry(tmp_path: Path) -> None:
    task = replace(SMALL, findings=("circumscribed_mass",))
    rows = site_detectability("ge", [5000, 1, None], tmp_path, task=task, workers=1)
    assert rows and {r.cr for r in rows} == {5000.0} and {r.vendor for r in rows} == {"ge"}
    folders = [p for p in tmp_path.rglob("results.json")]
    assert len(folders) == 1 and "ge-1914x2294-0.1mm-codec" in str(folders[0])
    stamp = folders[0].stat().st_mtime_ns
    _same(site_detectability("ge", [5000], tmp_path, task=task, workers=1), rows)
    assert folders[0].stat().st_mtime_ns == stamp  # read from the cache, not recomputed
    with pytest.raises(DetectabilityError):
        site_detectability("ge", [100000], tmp_path, task=task)
