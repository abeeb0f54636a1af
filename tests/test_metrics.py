"""Metrics with confidence intervals: right values, honest intervals, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from dicomcr.experiments.metrics import auprc_bootstrap, auroc_delong, bootstrap_ci


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
