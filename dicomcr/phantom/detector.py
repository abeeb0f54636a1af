"""Image formation: exposure under AEC, quantum and electronic noise, vendor 'For Presentation' LUT."""

from __future__ import annotations

import numpy as np

from .anatomy import ViewFields
from .fields import upsample
from .params import Detector, Difficulty, Tissue

HEEL_DROP = 0.25
"""Fraction of the fluence the heel effect takes away at the nipple side."""
SHOULDER = 0.90
"""Display fraction of the breast's densest tissue (99.7th percentile): the shoulder starts here."""


def log_signal(
    fields: ViewFields, lesion_delta: np.ndarray, factor: int, detector: Detector,
    physics: Tissue, difficulty: Difficulty, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The processed log-attenuation image at full resolution, and the full-resolution breast mask.

    The AEC exposes so that the detector behind the breast's centre receives a fixed fluence; the
    quantum noise of a pixel that sees N photons is 1/sqrt(N) in log units, plus read noise. The
    heel effect lowers the fluence towards the nipple side. Behind a lesion fewer photons arrive
    (N exp(-delta)), so its pixels are noisier than the tissue around it, as on a real detector.
    """
    shape = lesion_delta.shape
    cols_low = fields.attenuation.shape[1]
    heel = 1.0 - HEEL_DROP * (np.arange(cols_low, dtype=np.float32) + 0.5) / cols_low
    quanta = reference_quanta(detector, physics) * heel[None, :] * np.exp(
        -(fields.attenuation - fields.reference_attenuation))
    sigma_low = np.sqrt(1.0 / quanta + (detector.electronic_noise / quanta) ** 2)
    mean = upsample(fields.attenuation + fields.equalization, factor, shape)
    breast = mean > 0.02
    signal = mean
    signal += lesion_delta * breast
    sigma = upsample(sigma_low.astype(np.float32), factor, shape)
    if lesion_delta.any():
        behind = np.nonzero(lesion_delta)
        # 1/N from sigma^2 = 1/N + (e/N)^2, then N exp(-delta) photons behind the lesion
        e2 = detector.electronic_noise**2
        s2 = sigma[behind].astype(np.float64) ** 2
        inverse = (np.sqrt(1.0 + 4.0 * e2 * s2) - 1.0) / (2.0 * e2) * np.exp(lesion_delta[behind])
        sigma[behind] = np.sqrt(inverse + e2 * inverse * inverse)
    sigma *= difficulty.noise_scale
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= sigma
    signal += noise
    return signal, breast


def reference_quanta(detector: Detector, physics: Tissue) -> float:
    """Photons per pixel behind the breast's centre: the AEC's target fluence times pixel area."""
    return physics.detector_fluence_per_mm2 * detector.pixel_spacing_mm**2


def registered_range(fields: ViewFields, detector: Detector, physics: Tissue) -> float:
    """The largest log signal the detector still registers in this exposure.

    Beyond it fewer photons arrive than the read noise (in quanta): the pixel is noise, whatever
    lies above it. The AEC sets the exposure, so the range is the reference attenuation plus
    ln(N_ref x heel / read noise), about 5.7 log units above the breast's centre on both vendors.
    """
    weakest = reference_quanta(detector, physics) * (1.0 - HEEL_DROP)
    return fields.reference_attenuation + float(np.log(weakest / detector.electronic_noise))


def presentation_curve(fields: ViewFields, top_signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Control points of the vendor's tone curve: log signal -> display fraction 0..1.

    The breast's interior fills most of the range (fat mid-grey, dense tissue bright), the thin
    periphery and skin are compressed into the lower part, air is near black. Above the breast's
    densest tissue a logarithmic shoulder (its slope continuous with the tissue's) reaches the
    stored maximum only at `top_signal`, the end of the detector's registered range: a lesion the
    detector sees through is never written at the maximum, however dense it is.
    """
    inside = (fields.attenuation + fields.equalization)[fields.breast]
    lo, mid, hi = np.percentile(inside, [2.0, 50.0, 99.7]) if inside.size else (1.0, 2.0, 3.0)
    span = max(hi - lo, 1e-3)
    xs = [0.0, 0.6 * lo, lo, mid, hi]
    ys = [0.005, 0.16, 0.30, 0.58, SHOULDER]
    length = max(top_signal, hi + 0.5 * span) - hi
    # g(t) = ln(1 + t / a) / ln(1 + 1 / a) on t in [0, 1]; a such that g'(0) matches the slope.
    slope = (SHOULDER - ys[3]) / max(hi - mid, 1e-3) * length / (1.0 - SHOULDER)
    a = _shoulder_scale(slope)
    t = np.geomspace(1e-3, 1.0, 40)
    xs += list(hi + length * t)
    ys += list(SHOULDER + (1.0 - SHOULDER) * np.log1p(t / a) / np.log1p(1.0 / a))
    xs_arr = np.maximum.accumulate(np.asarray(xs, dtype=np.float64) + np.arange(len(xs)) * 1e-6)
    return xs_arr.astype(np.float32), np.asarray(ys, dtype=np.float32)


def _shoulder_scale(slope: float) -> float:
    """The a > 0 with 1 / (a ln(1 + 1/a)) = slope (the shoulder's relative slope at its start)."""
    if slope <= 1.0:  # the tissue's slope already fits the range: (nearly) linear
        return 1e6
    lo, hi = 1e-12, 1e6
    for _ in range(200):  # bisection in log space; the function falls monotonically in a
        a = np.sqrt(lo * hi)
        if 1.0 / (a * np.log1p(1.0 / a)) > slope:
            lo = a
        else:
            hi = a
    return float(np.sqrt(lo * hi))


def to_pixels(signal: np.ndarray, curve: tuple[np.ndarray, np.ndarray], detector: Detector
              ) -> np.ndarray:
    """Apply the tone curve and quantise to the detector's BitsStored (MONOCHROME2 polarity)."""
    xs, ys = curve
    top = detector.max_value
    # A table four entries per output level on the curve's steepest part: cheaper than
    # interpolating every pixel, and as exact.
    steepest = float(np.max(np.diff(ys) / np.maximum(np.diff(xs), 1e-9)))
    entries = int(np.clip(4 * top * steepest * (xs[-1] - xs[0]), 4 * (top + 1), 1 << 22))
    grid = np.linspace(xs[0], xs[-1], entries, dtype=np.float32)
    table = np.rint(np.interp(grid, xs, ys) * top).astype(np.uint16)
    index = (signal - xs[0]) * np.float32((len(grid) - 1) / (xs[-1] - xs[0]))
    np.clip(index, 0, len(grid) - 1, out=index)
    return table[index.astype(np.int32)]


def voi_window(pixels: np.ndarray, breast: np.ndarray) -> tuple[float, float]:
    """Window centre and width that show the breast: its 1st to 99.5th percentile."""
    sample = pixels[::4, ::4][breast[::4, ::4]]
    if sample.size == 0:
        sample = pixels.ravel()
    lo, hi = np.percentile(sample, [1.0, 99.5])
    width = max(float(hi - lo) * 1.1, 2.0)
    return float(np.round((lo + hi) / 2.0)), float(np.round(width))
