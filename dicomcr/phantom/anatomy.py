"""Breast anatomy in one projection: outline, compressed thickness, skin, pectoral muscle, tissue.

Coordinates are millimetres in a canonical frame: the chest wall is the image's left edge (x = 0),
the nipple points to +x, y grows downwards (towards the patient's feet in MLO, medial in CC).
Right breasts are mirrored at the very end, so that every view keeps the breast against its
chest-wall edge: left views on the left of the image, right views on the right (the paper's crop).

A lesion lives in a 3-D breast frame (u, m, s): u the fraction of the nipple distance from the chest
wall, m medial (-1) to lateral (+1), s inferior (-1) to superior (+1). CC projects (u, m); MLO
projects u and the oblique mix of s and m at the C-arm angle, so both views agree on the nipple
distance, as radiologists triangulate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .fields import power_law_noise, smoothstep, upsample
from .params import Tissue

MLO_ANGLE_DEG = 45.0


@dataclass(frozen=True)
class Pectoral:
    """The pectoral muscle in an MLO view: a slightly convex triangle in the upper chest-wall corner."""

    top_mm: float  # width of the muscle along the top edge
    side_mm: float  # height of the muscle along the chest-wall edge
    bulge: float  # convexity of its anterior border

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed measure: > 0 inside the muscle, < 0 outside, ~ mm near the border."""
        a, b = x / self.top_mm, y / self.side_mm
        level = 1.0 + self.bulge * a * b - (a + b)
        return level * min(self.top_mm, self.side_mm) / np.sqrt(2.0)


@dataclass(frozen=True)
class BreastShape:
    """The outline and thickness of one compressed breast in one view."""

    view: str  # "CC" or "MLO"
    depth_mm: float  # chest wall to nipple
    center_y_mm: float  # height of the nipple
    half_height_up_mm: float
    half_height_down_mm: float
    thickness_mm: float
    wobble: tuple[tuple[float, float], ...]  # (amplitude, phase) for harmonics 2, 3, ...
    pectoral: Pectoral | None

    def radius(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside the breast outline, 1 on the skin, > 1 in air."""
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        dy = y - self.center_y_mm
        half = np.where(dy < 0, self.half_height_up_mm, self.half_height_down_mm)
        nx, ny = x / self.depth_mm, dy / half
        theta = np.arctan2(ny, np.maximum(nx, 1e-6))
        bump = np.ones_like(theta)
        for k, (amp, phase) in enumerate(self.wobble, start=2):
            bump = bump + amp * np.cos(k * theta + phase)
        r = np.sqrt(nx * nx + ny * ny) / bump
        return np.where(x < 0, np.float32(9.0), r).astype(np.float32)

    def project(self, u: float, m: float, s: float) -> tuple[float, float]:
        """Where a point of the 3-D breast frame lands in this view (canonical mm)."""
        if self.view == "CC":
            across = m  # lateral is up in CC views
        else:
            angle = np.deg2rad(MLO_ANGLE_DEG)
            across = s * np.cos(angle) + m * np.sin(angle)
        x = u * self.depth_mm
        reach = np.sqrt(max(1.0 - u * u, 0.0))
        half = self.half_height_up_mm if across > 0 else self.half_height_down_mm
        y = self.center_y_mm - across * half * reach
        return float(x), float(y)

    def project_offset(self, dx: float, dm: float, ds: float) -> tuple[float, float]:
        """How a small 3-D displacement in mm (depth, lateral, superior) appears in this view."""
        if self.view == "CC":
            return dx, -dm
        angle = np.deg2rad(MLO_ANGLE_DEG)
        return dx, -(ds * np.cos(angle) + dm * np.sin(angle))

    def holds(self, x: float, y: float, margin: float = 0.8) -> bool:
        """Whether (x, y) is well inside the breast (and outside the pectoral muscle)."""
        inside = float(self.radius(np.float32(x), np.float32(y))) < margin and x > 8.0
        if inside and self.pectoral is not None:
            inside = float(self.pectoral.inside(np.float32(x), np.float32(y))) < -10.0
        return inside


@dataclass(frozen=True)
class BreastTissue:
    """Per-breast composition, shared by both views of that breast."""

    density: float  # mean fibroglandular fraction inside the glandular cone
    texture_amplitude: float  # logit-scale amplitude of the power-law texture
    patchiness: float  # logit-scale amplitude of centimetre-scale density variation
    subcutaneous_fat_mm: float
    retromammary_fat_mm: float


@dataclass
class ViewFields:
    """Low-resolution maps of one view, in canonical orientation."""

    attenuation: np.ndarray  # log attenuation A = integral of mu along the ray
    equalization: np.ndarray  # what vendor processing adds back at the thin periphery
    breast: np.ndarray  # bool, inside the skin line
    gland: np.ndarray  # fibroglandular fraction (for lesions that replace tissue)
    reference_attenuation: float  # what the AEC exposes for: mean A over the breast's centre


def breast_fields(
    shape: BreastShape, tissue: BreastTissue, physics: Tissue,
    grid: tuple[int, int], spacing_mm: float, rng: np.random.Generator,
) -> ViewFields:
    """Render outline, thickness, skin, tissue texture and pectoral muscle on a coarse grid."""
    rows, cols = grid
    y = ((np.arange(rows, dtype=np.float32) + 0.5) * spacing_mm)[:, None]
    x = ((np.arange(cols, dtype=np.float32) + 0.5) * spacing_mm)[None, :]
    r = shape.radius(x, np.broadcast_to(y, (rows, cols)))
    breast = r < 1.0
    # Distance to the skin (mm). Only air is skin's outside: the chest-wall edge and the top and
    # bottom edges (where an MLO's axillary tail leaves the image) are not, so only the side
    # opposite the chest wall is padded with air.
    padded = np.pad(breast, ((0, 0), (0, 1)), constant_values=False)
    dist = ndimage.distance_transform_edt(padded)[:, :-1].astype(np.float32) * spacing_mm
    dist[~breast] = 0.0

    # Compressed thickness: flat under the paddle, a half-round roll-off of radius T/2 at the edge.
    T = shape.thickness_mm
    R = T / 2.0
    d = np.minimum(dist, R)
    thick = 2.0 * np.sqrt(np.maximum(d * (T - d), 0.0))
    inner = np.maximum((R - physics.skin_thickness_mm) ** 2 - (R - d) ** 2, 0.0)
    skin_path = np.minimum(thick, thick - 2.0 * np.sqrt(inner))

    # Fibroglandular tissue: a power-law texture inside a cone behind the nipple, fat around it.
    texture = power_law_noise(grid, physics.texture_beta, spacing_mm, rng)
    # Patchy density on the scale of centimetres: where the fibroglandular tissue gathers.
    coarse_grid = (grid[0] // 8 + 2, grid[1] // 8 + 2)
    patches = power_law_noise(coarse_grid, physics.texture_beta, spacing_mm * 8, rng,
                              lowest_frequency_per_mm=1 / 100.0)
    patches = upsample(patches, 8, (coarse_grid[0] * 8, coarse_grid[1] * 8))[: grid[0], : grid[1]]
    cone = smoothstep(dist, tissue.subcutaneous_fat_mm, tissue.subcutaneous_fat_mm + 15.0)
    cone *= smoothstep(np.broadcast_to(x, grid), tissue.retromammary_fat_mm,
                       tissue.retromammary_fat_mm + 15.0)
    cone *= np.clip(1.3 - 0.5 * r, 0.0, 1.0)  # denser towards the centre of the breast
    # A logistic of the texture keeps the fraction in (0, 1) without clipped, flat patches.
    logit = np.log(tissue.density / (1.0 - tissue.density))
    gland = cone / (1.0 + np.exp(-(logit + tissue.texture_amplitude * texture
                                   + tissue.patchiness * patches)))
    mu = physics.fat + (physics.gland - physics.fat) * gland
    attenuation = physics.skin * skin_path + mu * (thick - skin_path)

    if shape.pectoral is not None:
        level = shape.pectoral.inside(np.broadcast_to(x, grid), np.broadcast_to(y, grid))
        # The muscle fills more of the thickness towards the axilla, and it is striated.
        muscle = smoothstep(level, -1.5, 1.5) * (0.3 + 0.35 * smoothstep(level, 0.0, 40.0))
        muscle *= breast
        striation = power_law_noise(grid, 2.5, spacing_mm, rng) * 0.004
        mixed = physics.muscle + striation - mu
        attenuation = attenuation + muscle * mixed * thick
        gland = np.maximum(gland, muscle)

    attenuation = np.where(breast, attenuation, 0.0).astype(np.float32)
    # Vendor processing restores most of the signal lost where the breast thins out.
    mean_mu = physics.fat + (physics.gland - physics.fat) * tissue.density * 0.6
    equalization = (0.75 * mean_mu * (T - thick)).astype(np.float32) * breast
    centre = breast & (dist > R)
    reference = float(np.mean(attenuation[centre])) if centre.any() else float(mean_mu * T)
    return ViewFields(attenuation, equalization.astype(np.float32), breast,
                      gland.astype(np.float32), reference)
