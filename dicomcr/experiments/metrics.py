"""Classification metrics with 95 % confidence intervals, as small pure functions over arrays.

AUROC with DeLong's CI (DeLong et al. 1988, in the fast midrank form of Sun & Xu 2014); AUPRC
(average precision) with a stratified bootstrap CI, the seed passed in. No global state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """A metric's value and its confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.3f} ({self.level:.0%} CI {self.low:.3f}-{self.high:.3f})"


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"labels and scores must be 1-D and of equal length, got {y.shape}, "
                         f"{s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if y.min() == y.max():
        raise ValueError("both classes are needed: the labels hold only one")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y.astype(bool), s


def _midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their mean rank."""
    return stats.rankdata(x, method="average")


def auroc_delong(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> Estimate:
    """AUROC with DeLong's asymptotic CI (clipped to [0, 1])."""
    y, s = _check(labels, scores)
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's interval needs at least two of each class, got {m} positive "
                         f"and {n} negative")
    tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n  # structural components of the positives
    v01 = 1.0 - (tz[m:] - ty) / m  # and of the negatives
    variance = np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(max(variance, 0.0))
    return Estimate(float(auc), float(max(auc - half, 0.0)), float(min(auc + half, 1.0)), level)


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray,
                 scores: np.ndarray, seed: int, n_resamples: int = 2000, level: float = 0.95
                 ) -> Estimate:
    """Percentile CI of `metric` over stratified resamples (each class resampled on its own)."""
    y, s = _check(labels, scores)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        take = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        values[i] = metric(y[take], s[take])
    low, high = np.quantile(values, [0.5 - level / 2, 0.5 + level / 2])
    return Estimate(float(metric(y, s)), float(low), float(high), level)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUPRC as average precision, sum over thresholds of (R_n - R_n-1) P_n: scikit-learn's
    definition (ties form one threshold), in plain numpy so a bootstrap stays fast."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auprc_bootstrap(labels: np.ndarray, scores: np.ndarray, seed: int,
                    n_resamples: int = 2000, level: float = 0.95) -> Estimate:
    """AUPRC (average precision) with a stratified bootstrap CI."""
    return bootstrap_ci(average_precision, labels, scores, seed, n_resamples, level)


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises sensitivity + specificity - 1 (Youden's J): the
    operating point a model file records from its validation data."""
    from sklearn.metrics import roc_curve

    y, s = _check(labels, scores)
    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    return float(min(max(thresholds[best], 1e-6), 1 - 1e-6))
