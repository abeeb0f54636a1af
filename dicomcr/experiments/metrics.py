"""Classification metrics with 95 % confidence intervals, as small pure functions over arrays.

AUROC with DeLong's CI (DeLong et al. 1988, in the fast midrank form of Sun & Xu 2014), and
DeLong's paired test of two AUROCs on the same cases; AUROC per subgroup of the positives (a finding
type) against all negatives; AUPRC (average precision) with a stratified bootstrap CI, the seed
passed in. No global state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
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
    if y.size == 0:
        raise ValueError("no cases to score")
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


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's placement values: for each positive the share of negatives it outranks
    (V10), for each negative the share of positives that outrank it (V01); ties count half."""
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's interval needs at least two of each class, got {m} positive "
                         f"and {n} negative")
    tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(auc), v10, v01


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"the confidence level must be in (0, 1), got {level}")
    return float(stats.norm.ppf(0.5 + level / 2))


def auroc_delong(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> Estimate:
    """AUROC with DeLong's asymptotic CI (clipped to [0, 1])."""
    y, s = _check(labels, scores)
    return _estimate(*_placements(y, s), level)


def _estimate(auc: float, v10: np.ndarray, v01: np.ndarray, level: float) -> Estimate:
    variance = np.var(v10, ddof=1) / len(v10) + np.var(v01, ddof=1) / len(v01)
    half = _z(level) * np.sqrt(max(variance, 0.0))
    return Estimate(auc, float(max(auc - half, 0.0)), float(min(auc + half, 1.0)), level)


@dataclass(frozen=True)
class PairedComparison:
    """Two AUROCs on the same cases, their difference (first - second) and its p-value."""

    first: Estimate
    second: Estimate
    difference: Estimate
    p_value: float  # two-sided, of 'the two AUROCs are equal'

    def __str__(self) -> str:
        return f"difference {self.difference}, p = {self.p_value:.3g}"


def delong_paired(labels: np.ndarray, first: np.ndarray, second: np.ndarray,
                  level: float = 0.95) -> PairedComparison:
    """DeLong's test of two correlated AUROCs: two models' scores on the same cases.

    Var(A1 - A2) = (S10_11 + S10_22 - 2 S10_12) / m + (S01_11 + S01_22 - 2 S01_12) / n, with S10
    and S01 the covariance matrices of the two models' placement values over the m positives
    and the n negatives (DeLong et al. 1988); z = (A1 - A2) / sqrt(Var), two-sided p-value. The
    paired test is the one for "is M-CRx worse than M-CR1 on these breasts": overlapping
    per-model intervals (the paper's comparison) ignore that both models saw the same cases.
    """
    y, a = _check(labels, first)
    _, b = _check(labels, second)
    auc_a, v10_a, v01_a = _placements(y, a)
    auc_b, v10_b, v01_b = _placements(y, b)
    s10, s01 = np.cov(np.stack([v10_a, v10_b])), np.cov(np.stack([v01_a, v01_b]))
    contrast = np.array([1.0, -1.0])
    variance = max(float(contrast @ s10 @ contrast / len(v10_a)
                         + contrast @ s01 @ contrast / len(v01_a)), 0.0)
    diff = auc_a - auc_b
    half = _z(level) * np.sqrt(variance)
    if variance > 0:
        p = float(2.0 * stats.norm.sf(abs(diff) / np.sqrt(variance)))
    else:  # the same ranking twice: no difference to test
        p = 1.0 if diff == 0 else 0.0
    return PairedComparison(
        _estimate(auc_a, v10_a, v01_a, level), _estimate(auc_b, v10_b, v01_b, level),
        Estimate(diff, float(max(diff - half, -1.0)), float(min(diff + half, 1.0)), level), p)


def auroc_by_group(labels: np.ndarray, scores: np.ndarray, groups: Sequence[Hashable],
                   level: float = 0.95) -> dict[Hashable, Estimate]:
    """AUROC with DeLong's CI of each group of positives (e.g. a finding type) against all the
    negatives: how well the model finds that kind of cancer. `groups` names each case's group
    (the negatives' are ignored); a group with fewer than two positives is left out."""
    y, s = _check(labels, scores)
    g = np.asarray(groups, dtype=object)
    if g.shape != y.shape:
        raise ValueError(f"groups must name every case, got {g.shape} for {y.shape}")
    out: dict[Hashable, Estimate] = {}
    for group in dict.fromkeys(g[y]):
        keep = ~y | (y & (g == group))
        if (y & keep).sum() >= 2:
            out[group] = auroc_delong(y[keep], s[keep], level)
    return out


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
