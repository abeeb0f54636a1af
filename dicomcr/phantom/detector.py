"""Image formation: exposure under AEC, quantum and electronic noise, vendor 'For Presentation' LUT."""

from __future__ import annotations

import numpy as np

from .anatomy import ViewFields
from .fields import upsample
from .params import Detector, Difficulty, Tissue


def log_signal(
    fields: ViewFields, lesion_delta: np.ndarray, factor: int, detector: Detector,
    physics: Tissue, difficulty: Difficulty, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The processed log-attenuation image at full resolution, and the full-resolution breast mask.

    The AEC exposes so that the detector behind the breast's centre receives a fixed fluence; the
    quantum noise of a pixel that sees N photons is 1/sqrt(N) in log units, plus read noise. The
    heel effect lowers the fluence towards the nipple side.
    """
    shape = lesion_delta.shape
    pixel_area = detector.pixel_spacing_mm**2
    n_ref = physics.detector_fluence_per_mm2 * pixel_area
    cols_low = fields.attenuation.shape[1]
    heel = 1.0 - 0.25 * (np.arange(cols_low, dtype=np.float32) + 0.5) / cols_low
    quanta = n_ref * heel[None, :] * np.exp(-(fields.attenuation - fields.reference_attenuation))
    sigma_low = np.sqrt(1.0 / quanta + (detector.electronic_noise / quanta) ** 2)
    sigma_low *= difficulty.noise_scale
    mean = upsample(fields.attenuation + fields.equalization, factor, shape)
    breast = mean > 0.02
    signal = mean
    signal += lesion_delta * breast
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= upsample(sigma_low.astype(np.float32), factor, shape)
    signal += noise
    return signal, breast


def presentation_curve(fields: ViewFields) -> tuple[np.ndarray, np.ndarray]:
    """Control points of the vendor's tone curve: log signal -> display fraction 0..1.

    The breast's interior fills most of the range (fat mid-grey, dense tissue bright), the thin
    periphery and skin are compressed into the lower part, air is near black.
    """
    inside = (fields.attenuation + fields.equalization)[fields.breast]
    lo, mid, hi = np.percentile(inside, [2.0, 50.0, 99.7]) if inside.size else (1.0, 2.0, 3.0)
    span = max(hi - lo, 1e-3)
    xs = np.array([0.0, 0.6 * lo, lo, mid, hi, hi + 0.5 * span], dtype=np.float32)
    ys = np.array([0.005, 0.16, 0.30, 0.58, 0.90, 1.0], dtype=np.float32)
    return np.maximum.accumulate(xs + np.arange(6) * 1e-4), ys


def to_pixels(signal: np.ndarray, curve: tuple[np.ndarray, np.ndarray], detector: Detector
              ) -> np.ndarray:
    """Apply the tone curve and quantise to the detector's BitsStored (MONOCHROME2 polarity)."""
    xs, ys = curve
    top = detector.max_value
    # A table four times finer than the output levels: cheaper than interpolating every pixel.
    grid = np.linspace(xs[0], xs[-1], 4 * (top + 1), dtype=np.float32)
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
