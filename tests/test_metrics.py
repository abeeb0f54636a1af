"""Metrics with confidence intervals: right values, honest intervals, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from dicomcr.experiments.metrics import (
    auprc_bootstrap,
    auroc_by_group,
    auroc_delong,
    bootstrap_ci,
    delong_paired,
)


def _sample(rng: np.random.Generator, n: int, prevalence: float, separation: float):
    y = (rng.uniform(size=n) < prevalence).astype(int)
    y[:2] = [0, 1]
    return y, rng.normal(size=n) + separation * y


def test_auroc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y, s = _sample(rng, 300, 0.2, 1.0)
    s = np.round(s, 1)  # many ties
    assert auroc_delong(y, s).value == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_delong_interval_matches_the_bootstrap_and_covers_the_truth() -> None:
    rng = np.random.default_rng(1)
    y, s = _sample(rng, 400, 0.2, 1.2)
    delong = auroc_delong(y, s)
    boot = bootstrap_ci(lambda a, b: roc_auc_score(a, b), y, s, seed=2, n_resamples=1000)
    assert delong.high - delong.low == pytest.approx(boot.high - boot.low, rel=0.15)
    # Coverage: the true AUROC of N(1.2, 1) vs N(0, 1) is Phi(1.2 / sqrt(2)).
    from scipy.stats import norm

    truth = norm.cdf(1.2 / np.sqrt(2))
    hits = 0
    for i in range(300):
        y, s = _sample(np.random.default_rng(100 + i), 200, 0.2, 1.2)
        estimate = auroc_delong(y, s)
        hits += estimate.low <= truth <= estimate.high
    assert 0.90 <= hits / 300 <= 0.99


def test_auprc_bootstrap_is_seeded_and_brackets_the_value() -> None:
    rng = np.random.default_rng(3)
    y, s = _sample(rng, 300, 0.19, 1.0)
    a = auprc_bootstrap(y, s, seed=7, n_resamples=500)
    b = auprc_bootstrap(y, s, seed=7, n_resamples=500)
    c = auprc_bootstrap(y, s, seed=8, n_resamples=500)
    assert a == b and a != c
    assert a.value == pytest.approx(average_precision_score(y, s))
    assert a.low < a.value < a.high
    assert "95% CI" in str(a)


@pytest.mark.parametrize(("labels", "scores", "message"), [
    ([0, 0, 0], [0.1, 0.2, 0.3], "both classes"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "0 or 1"),
    ([0, 1], [0.1], "equal length"),
    ([0, 1], [0.1, np.nan], "finite"),
    ([0, 0, 1], [0.1, 0.2, 0.3], "at least two of each class"),
    ([], [], "no cases to score"),  # not numpy's "zero-size array to reduction operation"
])
def test_bad_input_is_refused(labels, scores, message) -> None:
    with pytest.raises(ValueError, match=message):
        auroc_delong(np.array(labels), np.array(scores))


def test_average_precision_equals_sklearn_with_ties() -> None:
    from dicomcr.experiments.metrics import average_precision

    rng = np.random.default_rng(5)
    for _ in range(50):
        y, s = _sample(rng, int(rng.integers(10, 200)), 0.3, 0.8)
        s = np.round(s, 1)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def test_paired_delong_matches_its_definition_by_hand() -> None:
    """Four positives and five negatives, ties within and across the two models: the placement
    values by brute force over every (positive, negative) pair, then DeLong et al. (1988), eq. for
    the variance of A1 - A2 with the covariances of the two models' placements."""
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    a = np.array([0.9, 0.7, 0.6, 0.3, 0.6, 0.5, 0.3, 0.2, 0.1])
    b = np.array([0.8, 0.4, 0.8, 0.2, 0.3, 0.4, 0.5, 0.1, 0.1])
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    v10 = {k: np.array([np.mean([_psi(s[i], s[j]) for j in neg]) for i in pos]) for k, s in
           (("a", a), ("b", b))}
    v01 = {k: np.array([np.mean([_psi(s[i], s[j]) for i in pos]) for j in neg]) for k, s in
           (("a", a), ("b", b))}
    # By hand: A's positives outrank 5, 5, 4.5, 2.5 of the 5 negatives -> AUROC 17/20 = 0.85;
    # B's: 5, 3.5, 5, 2 -> 15.5/20 = 0.775.
    assert v10["a"] == pytest.approx([1.0, 1.0, 0.9, 0.5])
    assert v10["b"] == pytest.approx([1.0, 0.7, 1.0, 0.4])
    auc_a, auc_b = v10["a"].mean(), v10["b"].mean()
    assert (auc_a, auc_b) == pytest.approx((0.85, 0.775))

    def cov(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.sum((u - u.mean()) * (v - v.mean())) / (len(u) - 1))

    var = sum((cov(p["a"], p["a"]) + cov(p["b"], p["b"]) - 2 * cov(p["a"], p["b"])) / len(p["a"])
              for p in (v10, v01))
    z = (auc_a - auc_b) / np.sqrt(var)
    from scipy.stats import norm

    result = delong_paired(y, a, b)
    assert result.difference.value == pytest.approx(0.075, abs=1e-12)
    assert result.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
    half = 1.959963984540054 * np.sqrt(var)
    assert (result.difference.low, result.difference.high) == pytest.approx(
        (0.075 - half, 0.075 + half), rel=1e-9)
    assert result.first == auroc_delong(y, a) and result.second == auroc_delong(y, b)


def test_paired_delong_is_calibrated_and_sees_a_real_difference() -> None:
    """Two scorers of equal skill: about 5 % of p-values below 0.05 (the paired variance is
    neither too small nor too large); a clearly better scorer: p tiny, the CI excludes 0."""
    from scipy.stats import norm

    rejected, covered = 0, 0
    truth_gap = 0.0
    for i in range(300):
        rng = np.random.default_rng(1000 + i)
        y = (rng.uniform(size=200) < 0.25).astype(int)
        y[:2] = [0, 1]
        shared = rng.normal(size=200) + 1.0 * y  # what both models see: correlated scores
        a, b = shared + rng.normal(size=200), shared + rng.normal(size=200)
        result = delong_paired(y, a, b)
        rejected += result.p_value < 0.05
        covered += result.difference.low <= truth_gap <= result.difference.high
    assert 0.02 <= rejected / 300 <= 0.09
    assert 0.91 <= covered / 300 <= 0.98
    rng = np.random.default_rng(7)
    y = (rng.uniform(size=400) < 0.3).astype(int)
    good, weak = rng.normal(size=400) + 2.0 * y, rng.normal(size=400) + 0.5 * y
    result = delong_paired(y, good, weak)
    assert result.p_value < 1e-6 and result.difference.low > 0
    assert result.difference.value == pytest.approx(
        roc_auc_score(y, good) - roc_auc_score(y, weak), abs=1e-12)
    assert norm.cdf(2 / np.sqrt(2)) - norm.cdf(0.5 / np.sqrt(2)) == pytest.approx(
        result.difference.value, abs=0.08)
    same = delong_paired(y, good, 3 * good + 1)  # the same ranking: no difference at all
    assert same.p_value == 1.0 and same.difference.low == same.difference.high == 0.0


def test_auroc_by_group_takes_each_groups_positives_against_all_negatives() -> None:
    rng = np.random.default_rng(11)
    y = np.r_[np.ones(60, int), np.zeros(140, int)]
    groups = np.array(["mass"] * 40 + ["calcification"] * 19 + ["other"] * 1 + ["normal"] * 140)
    s = rng.normal(size=200) + np.r_[np.full(40, 2.0), np.full(20, 0.3), np.zeros(140)]
    by = auroc_by_group(y, s, groups)
    assert set(by) == {"mass", "calcification"}  # one 'other' positive: no interval, left out
    mass = np.r_[np.ones(40, bool), np.zeros(20, bool), np.ones(140, bool)]
    assert by["mass"] == auroc_delong(y[mass], s[mass])
    assert by["mass"].value > 0.85 > by["calcification"].value
    with pytest.raises(ValueError, match="every case"):
        auroc_by_group(y, s, groups[:-1])
