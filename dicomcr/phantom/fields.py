"""Random fields and resampling: power-law texture and a fast linear upsampler."""

from __future__ import annotations

import numpy as np


def power_law_noise(
    shape: tuple[int, int], beta: float, spacing_mm: float, rng: np.random.Generator,
    lowest_frequency_per_mm: float = 1 / 20.0,
) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f^beta, zero mean and unit variance.

    Below `lowest_frequency_per_mm` the spectrum is flat: real mammograms follow the power law
    from about 0.1 to 1 cycle/mm with beta near 3 (Burgess et al. 2001) and flatten below it;
    the breast's large-scale density comes from the glandular cone instead.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = np.fft.rfft2(white)
    fy = np.fft.fftfreq(shape[0], d=spacing_mm)[:, None]
    fx = np.fft.rfftfreq(shape[1], d=spacing_mm)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f = np.maximum(f, lowest_frequency_per_mm)
    spectrum *= (f ** (-beta / 2.0)).astype(np.float32)
    field = np.fft.irfft2(spectrum, s=shape).astype(np.float32)
    field -= field.mean()
    field /= field.std() + 1e-12
    return field


def _upsample_axis(a: np.ndarray, factor: int, length: int, axis: int) -> np.ndarray:
    """Linear interpolation along one axis with pixel-centre alignment (as `grid_mode=True`)."""
    src = np.swapaxes(a, 0, axis)
    padded = np.concatenate([src[:1], src, src[-1:]], axis=0)  # edge extension
    shape = list(a.shape)
    shape[axis] = length
    out = np.empty(shape, dtype=a.dtype)
    dst = np.swapaxes(out, 0, axis)
    for k in range(factor):
        # output pixel i*factor+k sits at input coordinate i + (k + 0.5)/factor - 0.5
        t = (k + 0.5) / factor - 0.5
        lo, hi, w = (padded[:-2], padded[1:-1], t + 1.0) if t < 0 else (padded[1:-1], padded[2:], t)
        n = len(range(k, length, factor))
        dst[k::factor] = lo[:n] + np.float32(w) * (hi[:n] - lo[:n])
    return out


def upsample(a: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling by an integer factor, cropped to `shape`; a few passes over the output."""
    if factor == 1:
        return a[: shape[0], : shape[1]].copy()
    # columns first, on the small array, so that the large pass writes whole contiguous rows
    return _upsample_axis(_upsample_axis(a, factor, shape[1], 1), factor, shape[0], 0)


def smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below lo, 1 above hi, a smooth cubic between."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
