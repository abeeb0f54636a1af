"""Observer templates on an ROI grid: Laguerre–Gauss, convolutional LG and DoG channels, NPWE.

Every function returns a (pixels, k) matrix whose columns are templates over a flattened square
ROI of odd side; a ROI's feature vector is `roi.ravel() @ matrix`. All are built from the signal
known exactly (`signal`, the lesion's noise-free profile on the same grid) and the pixel pitch,
so that the same lesion gets the same templates in millimetres at the detector's and the paper's
pitch.

- `laguerre_gauss`: rotationally symmetric LG functions u_j(r) = exp(-pi r^2 / a^2)
  L_j(2 pi r^2 / a^2) (Barrett & Myers), the channels VICTRE's CHO uses; u_0 falls to 1/e at the
  lesion's radius (a = sqrt(pi) x radius).
- `convolutional`: Diaz et al. (IEEE TMI 2015) channels for irregular signals, each a profile
  convolved with the known signal (s * u_j), so that the channels follow a spiculated margin or
  the layout of a cluster instead of a disc at the ROI's centre.
- `difference_of_gaussians`: radial band-pass profiles in frequency (Abbey & Barrett 2001),
  D_j(f) = exp(-(f / (Q s_j))^2 / 2) - exp(-(f / s_j)^2 / 2), s_j = s_0 alpha^j, in cycles/mm,
  each convolved with the known signal: the channels suited to calcifications (DoG rather than
  Gabor: a cluster of round specks has no orientation to tune to; see the function).
- `npwe`: the non-prewhitening template with an eye filter, |E(f)|^2 S(f) (E = 1: NPW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import eval_laguerre

LG_CHANNELS = 6
"""Laguerre–Gauss orders 0..5: enough for rotationally symmetric signals (Gallas & Barrett 2003
found the CHO's efficiency saturating near 6 for round lesions in lumpy backgrounds)."""


@dataclass(frozen=True)
class DogBands:
    """Dense difference-of-Gaussians channels (Abbey & Barrett, JOSA A 2001), in cycles/mm.

    The ten bands run from 0.05 cycles/mm (the scale of a 1 cm cluster or a mass, half a cycle
    across it) to about 3 cycles/mm (a single 0.15-0.3 mm calcification), each 1.5 times the one
    below, with Abbey & Barrett's Q = 1.67. Bands whose lower edge s_j lies above the ROI's
    Nyquist frequency carry nothing at that pitch and are left out."""

    lowest_per_mm: float = 0.05
    ratio: float = 1.5
    q: float = 1.67
    count: int = 10

    def centres(self, pitch_mm: float) -> list[float]:
        """s_j in cycles/mm of the bands that a grid of `pitch_mm` can hold."""
        nyquist = 0.5 / pitch_mm
        return [s for j in range(self.count)
                if (s := self.lowest_per_mm * self.ratio**j) < nyquist]


@dataclass(frozen=True)
class EyeFilter:
    """The NPWE's eye filter E(f) = f^rho exp(-c f^2), peaking at `peak_per_degree`.

    Burgess, Li & Abbey (JOSA A 1997) and Eckstein et al. (2000): rho = 1.3, gamma = 2, peak at
    4 cycles/degree. The ROI is taken as shown one image pixel per display pixel of a 5 MP
    mammography display (0.165 mm pitch) read at 50 cm: 52.9 display pixels per degree."""

    rho: float = 1.3
    peak_per_degree: float = 4.0
    display_pitch_mm: float = 0.165
    viewing_distance_mm: float = 500.0

    @property
    def pixels_per_degree(self) -> float:
        return self.viewing_distance_mm * math.tan(math.radians(1.0)) / self.display_pitch_mm

    def response(self, cycles_per_pixel: np.ndarray) -> np.ndarray:
        """E at frequencies given in cycles per ROI pixel (as displayed)."""
        f = np.asarray(cycles_per_pixel) * self.pixels_per_degree
        c = self.rho / (2.0 * self.peak_per_degree**2)  # the peak of f^rho exp(-c f^2)
        return f**self.rho * np.exp(-c * f * f)


def _radius(side: int) -> np.ndarray:
    """Distance (pixels) of each pixel of a side x side grid from its centre pixel."""
    half = side // 2
    y, x = np.mgrid[-half:side - half, -half:side - half]
    return np.hypot(x, y).astype(np.float64)


def _frequencies(side: int) -> np.ndarray:
    """|f| in cycles per pixel on a side x side FFT grid (numpy's order)."""
    f = np.fft.fftfreq(side)
    return np.hypot(f[:, None], f[None, :])


def _check(signal: np.ndarray) -> int:
    if signal.ndim != 2 or signal.shape[0] != signal.shape[1] or signal.shape[0] % 2 == 0:
        raise ValueError(f"templates need a square ROI of odd side, got {signal.shape}")
    if not np.isfinite(signal).all() or not np.any(signal):
        raise ValueError("the known signal must be finite and not zero everywhere")
    return signal.shape[0]


def _unit_columns(columns: list[np.ndarray]) -> np.ndarray:
    matrix = np.stack([c.ravel() for c in columns], axis=1).astype(np.float64)
    norms = np.linalg.norm(matrix, axis=0)
    return matrix / np.where(norms > 0, norms, 1.0)


def laguerre_gauss(side: int, width_px: float, orders: int = LG_CHANNELS) -> np.ndarray:
    """LG channels of width a = `width_px` centred on a side x side ROI, unit norm each."""
    if side < 3 or side % 2 == 0 or not width_px > 0 or orders < 1:
        raise ValueError(f"LG channels need an odd side >= 3, a width > 0 and orders >= 1, "
                         f"got {side}, {width_px}, {orders}")
    g = 2.0 * np.pi * _radius(side) ** 2 / width_px**2
    return _unit_columns([np.exp(-0.5 * g) * eval_laguerre(j, g) for j in range(orders)])


def _convolve(signal: np.ndarray, spectra: list[np.ndarray]) -> list[np.ndarray]:
    """signal * h for each filter h given by its spectrum on the padded grid, cropped back."""
    side = signal.shape[0]
    start = side // 2  # padded to 2 side - 1: no wrap-around of the signal onto itself
    spectrum = np.fft.fft2(np.fft.ifftshift(np.pad(signal, ((start, start), (start, start)))))
    out = []
    for h in spectra:
        image = np.fft.fftshift(np.real(np.fft.ifft2(spectrum * h)))
        out.append(image[start:start + side, start:start + side])
    return out


def convolutional_lg(signal: np.ndarray, width_px: float, orders: int = LG_CHANNELS) -> np.ndarray:
    """Diaz et al.'s convolutional LG channels: the known signal convolved with each LG function."""
    side = _check(signal)
    padded = 2 * side - 1
    profiles = laguerre_gauss(padded, width_px, orders)
    spectra = [np.fft.fft2(np.fft.ifftshift(profiles[:, j].reshape(padded, padded)))
               for j in range(orders)]
    return _unit_columns(_convolve(signal, spectra))


def difference_of_gaussians(signal: np.ndarray, pitch_mm: float, bands: DogBands = DogBands()
                            ) -> np.ndarray:
    """DoG band-pass channels convolved with the known signal: one matched filter per band.

    A calcification cluster has no preferred orientation and no centre of mass worth a
    rotationally symmetric channel: its information is a handful of specks, a few pixels each,
    scattered over a centimetre. Convolving each band with the known cluster puts the band at
    every speck, and the Hotelling weights then choose the bands where the specks stand above
    the anatomical (low-frequency, power-law) and quantum (flat) noise. Gabor channels would add
    orientations and phases that a cluster of round specks does not need, and so many more
    channels to estimate a covariance for from the same pairs."""
    side = _check(signal)
    padded = 2 * side - 1
    f = _frequencies(padded) / pitch_mm  # cycles/mm
    centres = bands.centres(pitch_mm)
    if not centres:
        raise ValueError(f"no DoG band fits a {pitch_mm} mm grid")
    spectra = [np.exp(-0.5 * (f / (bands.q * s)) ** 2) - np.exp(-0.5 * (f / s) ** 2)
               for s in centres]
    return _unit_columns(_convolve(signal, spectra))


def npwe(signal: np.ndarray, eye: EyeFilter | None = EyeFilter()) -> np.ndarray:
    """The NPWE template (E^T E s) as one column; `eye=None` gives the NPW template, s itself."""
    side = _check(signal)
    if eye is None:
        return _unit_columns([signal.astype(np.float64)])
    padded = 2 * side - 1
    weight = eye.response(_frequencies(padded)) ** 2
    return _unit_columns(_convolve(signal, [weight]))
