"""Lesions: drawn once in the 3-D breast frame, rendered in each view at full resolution.

Malignant: spiculated masses and pleomorphic microcalcification clusters (5-30 calcifications of
0.1-0.6 mm within 1 cm). Benign: circumscribed round or oval masses, coarse calcifications, scattered
round calcifications. A lesion adds attenuation (log units) to the view and marks its ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import BreastShape
from .params import Difficulty, Tissue

MALIGNANT_KINDS = ("spiculated_mass", "pleomorphic_calcifications")
BENIGN_KINDS = ("circumscribed_mass", "coarse_calcifications", "scattered_calcifications")
MASS_KINDS = ("spiculated_mass", "circumscribed_mass")
SPICULE_DEPTH_FACTOR = 4.0  # path along the beam relative to a strand's width


@dataclass(frozen=True)
class Calcification:
    """One calcification: 3-D offset (mm: depth, lateral, superior) from its lesion, size, shape."""

    offset_mm: tuple[float, float, float]
    size_mm: float
    aspect: float  # elongation (1 = round)
    irregularity: float  # 0 = smooth ellipse, up to ~0.4 for pleomorphic shapes


@dataclass(frozen=True)
class Lesion:
    """A lesion of one breast; its position is in the 3-D breast frame (see anatomy)."""

    kind: str
    position: tuple[float, float, float]  # (u, m, s)
    radius_mm: float  # mass radius, or the radius the calcifications spread over
    aspect: float  # mass elongation
    calcifications: tuple[Calcification, ...] = ()


def draw_lesion(kind: str, position: tuple[float, float, float], difficulty: Difficulty,
                rng: np.random.Generator) -> Lesion:
    """Draw the size and shape of a lesion of `kind`; sizes scale with `difficulty.size_scale`."""
    k = difficulty.size_scale
    if kind == "spiculated_mass":
        return Lesion(kind, position, k * rng.uniform(4.0, 10.0), rng.uniform(1.0, 1.4))
    if kind == "circumscribed_mass":
        return Lesion(kind, position, k * rng.uniform(4.0, 11.0), rng.uniform(1.0, 1.8))
    if kind == "pleomorphic_calcifications":
        n = int(rng.integers(5, 31))
        spread = rng.uniform(2.5, 5.0)  # all within a 1 cm cluster
        calcs = tuple(
            Calcification(_in_ball(rng, spread), k * rng.uniform(0.1, 0.6), rng.uniform(1.0, 3.0),
                          rng.uniform(0.15, 0.4))
            for _ in range(n)
        )
        return Lesion(kind, position, spread, 1.0, calcs)
    if kind == "coarse_calcifications":
        n = int(rng.integers(1, 4))
        calcs = tuple(
            Calcification(_in_ball(rng, 4.0), k * rng.uniform(1.0, 3.0), rng.uniform(1.0, 1.5),
                          rng.uniform(0.1, 0.3))
            for _ in range(n)
        )
        return Lesion(kind, position, 4.0, 1.0, calcs)
    if kind == "scattered_calcifications":
        n = int(rng.integers(5, 16))
        spread = rng.uniform(15.0, 30.0)
        calcs = tuple(
            Calcification(_in_ball(rng, spread), k * rng.uniform(0.3, 1.0), 1.0, 0.0)
            for _ in range(n)
        )
        return Lesion(kind, position, spread, 1.0, calcs)
    raise ValueError(f"unknown lesion kind {kind!r}")


def _in_ball(rng: np.random.Generator, radius: float) -> tuple[float, float, float]:
    while True:
        p = rng.uniform(-1.0, 1.0, size=3)
        if p @ p <= 1.0:
            return tuple(float(v) for v in p * radius)


@dataclass(frozen=True)
class Canvas:
    """The full-resolution grid of a view, canonical orientation."""

    rows: int
    columns: int
    spacing_mm: float


BackgroundMu = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Mean attenuation (1/mm) of the tissue along the ray at canonical (x, y) in mm."""


def render_lesion(
    lesion: Lesion, shape: BreastShape, canvas: Canvas, background_mu: BackgroundMu, physics: Tissue,
    difficulty: Difficulty, delta: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
) -> None:
    """Add the lesion's attenuation to `delta` and its ground truth to `mask`, in place.

    A lesion replaces the tissue it occupies: what it adds is its attenuation minus that of the
    tissue along the same ray, so a mass is conspicuous in fat and masked in dense tissue.
    """
    cx, cy = shape.project(*lesion.position)
    if lesion.kind in MASS_KINDS:
        _render_mass(lesion, (cx, cy), canvas, background_mu, physics, difficulty, delta, mask, rng)
        return
    for calc in lesion.calcifications:
        dx, dy = shape.project_offset(*calc.offset_mm)
        here = np.array([cx + dx], dtype=np.float32), np.array([cy + dy], dtype=np.float32)
        _render_calcification(calc, (cx + dx, cy + dy), canvas, float(background_mu(*here)[0]),
                              physics, difficulty, delta, mask, rng, lesion.kind)
    if lesion.kind == "pleomorphic_calcifications":
        # The cluster's ground truth is the region a radiologist outlines around it.
        offsets = [shape.project_offset(*c.offset_mm) for c in lesion.calcifications]
        reach = max(np.hypot(dx, dy) for dx, dy in offsets) + 1.5
        _paint_disc(mask, canvas, (cx, cy), reach)


def _patch(canvas: Canvas, center: tuple[float, float], half_mm: float
           ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Slices of the canvas around `center` and the patch's pixel-centre coordinates in mm."""
    p = canvas.spacing_mm
    c0 = max(int(np.floor((center[0] - half_mm) / p)), 0)
    c1 = min(int(np.ceil((center[0] + half_mm) / p)) + 1, canvas.columns)
    r0 = max(int(np.floor((center[1] - half_mm) / p)), 0)
    r1 = min(int(np.ceil((center[1] + half_mm) / p)) + 1, canvas.rows)
    if c0 >= c1 or r0 >= r1:
        return None
    x = ((np.arange(c0, c1, dtype=np.float32) + 0.5) * p - center[0])[None, :]
    y = ((np.arange(r0, r1, dtype=np.float32) + 0.5) * p - center[1])[:, None]
    return slice(r0, r1), slice(c0, c1), x, y


def _detector_blur(patch: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The detector's point spread (about 60 um), applied to what the lesion adds."""
    sigma = 0.06 / spacing_mm
    return ndimage.gaussian_filter(patch, sigma) if sigma > 0.2 else patch


def _render_mass(lesion: Lesion, center: tuple[float, float], canvas: Canvas,
                 background_mu: BackgroundMu,
                 physics: Tissue, difficulty: Difficulty, delta: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> None:
    spiculated = lesion.kind == "spiculated_mass"
    R = lesion.radius_mm
    reach = R * (3.6 if spiculated else 1.3) * np.sqrt(lesion.aspect)
    found = _patch(canvas, center, reach)
    if found is None:
        return
    rows, cols, x, y = found
    angle = rng.uniform(0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    xr, yr = x * ca + y * sa, -x * sa + y * ca
    a, b = R * np.sqrt(lesion.aspect), R / np.sqrt(lesion.aspect)
    rho = np.sqrt((xr / a) ** 2 + (yr / b) ** 2)
    theta = np.arctan2(yr / b, xr / a)
    if spiculated:  # an irregular, ill-defined margin
        bump = 1.0 + sum(rng.uniform(0.03, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                         for k in range(3, 9))
        rho = rho / bump
    path = 2.0 * R * np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))  # chord of an ellipsoid
    if spiculated:
        path *= 1.0 - 0.6 * np.clip((rho - 0.75) / 0.25, 0.0, 1.0) ** 2
    mu_lesion = physics.carcinoma if spiculated else physics.benign_mass
    xx, yy = np.broadcast_arrays(x + center[0], y + center[1])
    surround = background_mu(xx, yy)
    added = difficulty.mass_contrast * (mu_lesion - surround) * path
    truth = rho < 1.0
    if spiculated:
        # Spicules are strands of fibrous tissue a few millimetres deep along the beam.
        spicules = _spicules(x, y, R, rng) * SPICULE_DEPTH_FACTOR
        added = added + difficulty.mass_contrast * (mu_lesion - physics.fat) * spicules
        truth |= spicules > 0.01  # the whole visible strand, as a radiologist outlines it
    delta[rows, cols] += _detector_blur(added.astype(np.float32), canvas.spacing_mm)
    mask[rows, cols] |= truth


def _spicules(x: np.ndarray, y: np.ndarray, R: float, rng: np.random.Generator) -> np.ndarray:
    """Path length (mm) through 8-20 thin, tapering spicules radiating from the mass."""
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for _ in range(int(rng.integers(8, 21))):
        phi = rng.uniform(0, 2 * np.pi)
        length = R * rng.uniform(1.0, 2.5)
        width = rng.uniform(0.3, 0.9)
        ux, uy = np.cos(phi), np.sin(phi)
        along = x * ux + y * uy - 0.6 * R  # starts inside the mass
        across = np.abs(-x * uy + y * ux)
        taper = np.clip(1.0 - along / length, 0.0, 1.0) * (along > 0)
        half = 0.5 * width * taper
        chord = 2.0 * np.sqrt(np.clip(half * half - across * across, 0.0, None))
        out = np.maximum(out, chord.astype(np.float32))
    return out


def _render_calcification(calc: Calcification, center: tuple[float, float], canvas: Canvas,
                          background_mu: float, physics: Tissue, difficulty: Difficulty,
                          delta: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                          kind: str) -> None:
    p = canvas.spacing_mm
    half = calc.size_mm * np.sqrt(calc.aspect) / 2.0 + 2.5 * p
    found = _patch(canvas, center, half)
    if found is None:
        return
    rows, cols, x, y = found
    # Supersample the particle: most calcifications are a pixel or two across.
    ss = int(np.clip(np.ceil(p / 0.02), 4, 16))
    offs = ((np.arange(ss, dtype=np.float32) + 0.5) / ss - 0.5) * p
    xs = (x[:, :, None, None] + offs[None, None, None, :])
    ys = (y[:, :, None, None] + offs[None, None, :, None])
    angle = rng.uniform(0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    xr, yr = xs * ca + ys * sa, -xs * sa + ys * ca
    r_minor = calc.size_mm / 2.0 / np.sqrt(calc.aspect)
    r_major = calc.size_mm / 2.0 * np.sqrt(calc.aspect)
    rho = np.sqrt((xr / r_major) ** 2 + (yr / r_minor) ** 2)
    if calc.irregularity > 0:
        theta = np.arctan2(yr / r_minor, xr / r_major)
        bump = 1.0 + sum(calc.irregularity / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                         for k in (2, 3, 5))
        rho = rho / np.maximum(bump, 0.3)
    if kind == "coarse_calcifications":  # popcorn-like: dense rim, lucent centre
        path = 2.0 * r_minor * (np.sqrt(np.clip(1.0 - rho**2, 0.0, None)) * (0.5 + 0.5 * rho))
    else:
        path = 2.0 * r_minor * np.sqrt(np.clip(1.0 - rho**2, 0.0, None))
    path = path.mean(axis=(2, 3))
    added = difficulty.calc_contrast * (physics.calcification - background_mu) * path
    delta[rows, cols] += _detector_blur(added.astype(np.float32), p)
    footprint = path > 0.02 * calc.size_mm
    if kind != "pleomorphic_calcifications":
        footprint = ndimage.binary_dilation(footprint, iterations=max(1, round(0.5 / p)))
    mask[rows, cols] |= footprint


def _paint_disc(mask: np.ndarray, canvas: Canvas, center: tuple[float, float], radius: float
                ) -> None:
    found = _patch(canvas, center, radius)
    if found is None:
        return
    rows, cols, x, y = found
    mask[rows, cols] |= (x * x + y * y) <= radius * radius
