"""d' of a linear observer from paired ROI features, with bootstrap CIs and paired differences.

The experiment's ROIs come in pairs: the same background with the lesion and without it (the
same anatomy and the same quantum noise). Pairing makes the difference between two CRs precise,
but it breaks the independence of the signal-present and signal-absent samples that the exact
intervals of Wunderlich et al. (IEEE TMI 2015: the CHO's SNR from Hotelling's T^2, a noncentral
F; Wunderlich & Noo 2011 for a fixed template, a noncentral t) are derived under. So the CIs here
are nonparametric: a bias-corrected and accelerated (BCa, Efron 1987) bootstrap over pairs (a
pair is resampled whole; the acceleration from the jackknife, one pair left out at a time), the
same resamples for every CR of a task, so that the difference of two CRs is paired too. (d' is a
ratio whose bootstrap distribution is skewed: on white noise, over 400 paired samples of 100
pairs, the plain percentile interval held the true d' 89 % of the time, BCa 92 %.)

- A trained observer (the CHO) is trained and tested on disjoint pairs: `splits` repeated random
  halves (seeded), each half training the template that the other half tests; its d' is the mean
  over the splits and halves. A replicate resamples pairs and repeats the same splits (a drawn
  pair stays on its side), retraining each template.
- A fixed template (the NPWE, whose template is the known signal) needs no training: its d' is
  taken over every pair.
d' = (mean t+ - mean t-) / sqrt((var t+ + var t-) / 2) on the test ratings; AUC = Phi(d' / sqrt 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri  # the normal CDF and its inverse (scipy.stats is slow to import)

CONFIDENCE = 0.95
RIDGE = 1e-9  # added to the standardised covariance's diagonal: a flat channel (CR 11000) stays solvable


@dataclass(frozen=True)
class Estimate:
    """A value with its 95 % CI."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Resampling:
    """What every CR of one task shares: the training halves and the resampling weights.

    `train[k]` marks the pairs that train split k (the rest test it, then the other way round);
    each row of `weights` says how many times a replicate counts each pair: row 0 is the sample
    itself (all 1), then `bootstrap` multinomial draws, then the jackknife (one pair left out
    per row, for BCa's acceleration)."""

    train: np.ndarray  # (splits, pairs) bool
    weights: np.ndarray  # (1 + bootstrap + pairs, pairs) float
    bootstrap: int

    @classmethod
    def draw(cls, pairs: int, splits: int, bootstrap: int, seed: int | np.random.SeedSequence
             ) -> Resampling:
        if pairs < 4 or splits < 1 or bootstrap < 1:
            raise ValueError(f"need at least 4 pairs, 1 split and 1 bootstrap replicate, got "
                             f"{pairs}, {splits}, {bootstrap}")
        rng = np.random.default_rng(seed)
        train = np.zeros((splits, pairs), dtype=bool)
        for k in range(splits):
            train[k, rng.permutation(pairs)[:pairs // 2]] = True
        draws = rng.multinomial(pairs, np.full(pairs, 1.0 / pairs), size=bootstrap)
        jackknife = 1.0 - np.eye(pairs)
        return cls(train, np.vstack([np.ones(pairs), draws, jackknife]).astype(np.float64),
                   bootstrap)

    def parts(self, replicates: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(the sample's value, the bootstrap replicates, the jackknife values) of `replicates`."""
        return float(replicates[0]), replicates[1:1 + self.bootstrap], replicates[1 + self.bootstrap:]


def auc_of(dprime: float) -> float:
    """AUC = Phi(d' / sqrt 2), the two-alternative forced choice's percent correct."""
    return float(ndtr(dprime / np.sqrt(2.0))) if np.isfinite(dprime) else float("nan")


def _standardised(present: np.ndarray, absent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both classes centred and scaled per channel by the pooled mean and sd: an invertible
    affine map of the channels, which leaves every linear observer's d' as it was and keeps the
    covariance well conditioned whatever the pixel units."""
    both = np.concatenate([present, absent])
    centre = both.mean(axis=0)
    scale = both.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return (present - centre) / scale, (absent - centre) / scale


def _weighted_dprime(t1: np.ndarray, t0: np.ndarray, w: np.ndarray) -> np.ndarray:
    """d' of ratings t1, t0 (replicates, pairs) under weights w (replicates, pairs)."""
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = (w * t1).sum(axis=1) / total
        m0 = (w * t0).sum(axis=1) / total
        v1 = (w * (t1 - m1[:, None]) ** 2).sum(axis=1) / (total - 1)
        v0 = (w * (t0 - m0[:, None]) ** 2).sum(axis=1) / (total - 1)
        d = (m1 - m0) / np.sqrt(0.5 * (v1 + v0))
    return np.where(total > 1, d, np.nan)


def fixed_dprimes(present: np.ndarray, absent: np.ndarray, resampling: Resampling) -> np.ndarray:
    """d' of a fixed template's ratings (pairs,) for the sample and every bootstrap replicate."""
    w = resampling.weights
    return _weighted_dprime(np.broadcast_to(present, w.shape), np.broadcast_to(absent, w.shape), w)


def hotelling_dprimes(present: np.ndarray, absent: np.ndarray, resampling: Resampling
                      ) -> np.ndarray:
    """Hold-out d' of the Hotelling observer on channel outputs (pairs, channels), for the sample
    and every replicate of `resampling`: shape (len(resampling.weights),).

    Each split trains on one half of the pairs and tests on the other, then the other way round
    (two-fold); the d' is the mean over the splits and folds. A replicate weights both halves
    by its draw: the template is retrained on the replicate's training pairs, so the interval
    covers the training's variability as well as the test's. (Its training halves hold fewer
    distinct pairs than the sample's, which biases the replicates low: BCa's bias correction is
    there for that; on white noise the interval then holds the ideal CHO's analytic d' at the
    nominal rate, where resampling the test ratings alone held it 75 % of the time.)"""
    if present.shape != absent.shape or present.ndim != 2:
        raise ValueError(f"channel outputs must be (pairs, channels) for both classes, got "
                         f"{present.shape} and {absent.shape}")
    x1, x0 = _standardised(present.astype(np.float64), absent.astype(np.float64))
    n, p = x1.shape
    outer1 = np.einsum("ni,nj->nij", x1, x1).reshape(n, p * p)
    outer0 = np.einsum("ni,nj->nij", x0, x0).reshape(n, p * p)
    out = np.zeros(len(resampling.weights))
    for half in resampling.train:
        for train in (half, ~half):
            wt = resampling.weights * train
            total = wt.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                m1 = wt @ x1 / total[:, None]
                m0 = wt @ x0 / total[:, None]
                s1 = (wt @ outer1).reshape(-1, p, p) - total[:, None, None] * m1[:, :, None] * m1[:, None, :]
                s0 = (wt @ outer0).reshape(-1, p, p) - total[:, None, None] * m0[:, :, None] * m0[:, None, :]
                pooled = (s1 + s0) / (2.0 * total - 2.0)[:, None, None]
            usable = np.isfinite(pooled).all(axis=(1, 2)) & (2.0 * total - 2.0 > p)
            pooled = np.where(usable[:, None, None], pooled, np.eye(p)) + RIDGE * np.eye(p)
            difference = np.where(usable[:, None], m1 - m0, 0.0)
            template = np.linalg.solve(pooled, difference[:, :, None])[:, :, 0]
            d = _weighted_dprime(template @ x1.T, template @ x0.T, resampling.weights * ~train)
            out += np.where(usable, d, np.nan)  # a covariance needs more dof than channels
    return out / (2 * len(resampling.train))


def _bca(value: float, boot: np.ndarray, jack: np.ndarray) -> tuple[float, float]:
    """BCa's 95 % interval: the bootstrap percentiles shifted by the bias (z0, from where the
    sample's value falls among the replicates) and the acceleration (a, the jackknife's skew)."""
    boot = boot[np.isfinite(boot)]
    if not np.isfinite(value) or boot.size < 10:
        return float("nan"), float("nan")
    if np.all(boot == value):
        return value, value  # nothing varies (a CR against itself): a zero-width interval
    below = (np.sum(boot < value) + 0.5 * np.sum(boot == value)) / boot.size
    z0 = ndtri(np.clip(below, 0.5 / boot.size, 1.0 - 0.5 / boot.size))
    jack = jack[np.isfinite(jack)]
    spread = jack.mean() - jack
    denominator = 6.0 * np.sum(spread**2) ** 1.5
    a = float(np.sum(spread**3) / denominator) if denominator > 0 else 0.0
    tail = (1.0 - CONFIDENCE) / 2.0
    levels = []
    for z in (ndtri(tail), ndtri(1.0 - tail)):
        levels.append(100.0 * ndtr(z0 + (z0 + z) / (1.0 - a * (z0 + z))))
    low, high = np.percentile(boot, levels)
    return float(low), float(high)


def estimate(replicates: np.ndarray, resampling: Resampling) -> Estimate:
    """The sample's value with its BCa 95 % interval."""
    value, boot, jack = resampling.parts(replicates)
    return Estimate(value, *_bca(value, boot, jack))


def paired_difference(replicates: np.ndarray, reference: np.ndarray, resampling: Resampling
                      ) -> tuple[Estimate, Estimate]:
    """(d' - d'_ref, 100 (d' - d'_ref) / d'_ref) with their CIs, on the same resamples: the
    replicates of the same arrays give exactly zero, with a zero-width interval."""
    delta = replicates - reference
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(reference > 0, 100.0 * delta / reference, np.nan)
    return estimate(delta, resampling), estimate(relative, resampling)
