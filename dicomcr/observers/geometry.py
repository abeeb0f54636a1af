"""Where the lesions go and where the ROIs are cut: the two pitches, the breast, the placements.

Every view is a left CC view of a full-size detector (Hologic 3328 x 4096 at 0.07 mm, GE 1914 x
2294 at 0.1 mm), in the phantom's canonical orientation (chest wall at the left edge). Its ROIs
are cut at the detector's pitch, from the decoded stored pixels, and at the paper's 30 % pitch,
from the decoded view normalised with its VOI window, resized and cropped exactly as the CNN's
input is (`data.preprocess.resize_and_crop`: the upper four fifths and the chest-wall half of a
CC view), so lesions are placed where that crop keeps them.

Several lesions share a view (and its codestream: the CR belongs to the whole image), at known,
non-overlapping positions: no ROI shares a pixel with another, and no lesion's signal (its
spicules included) reaches into another lesion's ROI, so each signal-absent ROI, cut at the same
position in the paired view without lesions, is a background that no lesion touched.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage

from ..data.preprocess import Preprocessing, crop_shape, normalise, resize_and_crop
from ..phantom.anatomy import BreastShape, BreastTissue
from ..phantom.params import DETECTORS, Detector
from ..phantom.study import DENSITY_CATEGORIES, DENSITY_SHARES
from .lesions import LesionClass, reference_delta, support_radius_mm

LATERALITY, VIEW = "L", "CC"
PREPROCESSING = Preprocessing()  # the paper's: resize to 30 %, crop, no further shrink
INSIDE = 0.85
"""A ROI's corners lie within this normalised radius of the breast outline (1 = the skin line):
inside the breast, clear of the skin."""
CANDIDATE_STEP_MM = 1.0  # lesion centres are tried on a grid this fine


class Pitch(StrEnum):
    """Where ROIs are cut: at the detector's pixel pitch, or at the paper's 30 % (the CNN's input)."""

    DETECTOR = "detector"
    PAPER = "paper"


@dataclass(frozen=True)
class Grid:
    """The image a ROI is cut from at one pitch, and where a detector pixel lands on it."""

    pitch: Pitch
    pitch_mm: float
    scale: tuple[float, float]  # (rows, columns) of this grid per detector pixel
    shape: tuple[int, int]  # of the whole image at this pitch (the crop, at the paper's)

    @classmethod
    @functools.cache
    def of(cls, vendor: str, pitch: Pitch) -> Grid:
        detector = DETECTORS[vendor]
        rows, cols = detector.rows, detector.columns
        if pitch is Pitch.DETECTOR:
            return cls(pitch, detector.pixel_spacing_mm, (1.0, 1.0), (rows, cols))
        small = (max(1, round(rows * PREPROCESSING.scale)), max(1, round(cols * PREPROCESSING.scale)))
        scale = (small[0] / rows, small[1] / cols)
        return cls(pitch, detector.pixel_spacing_mm / scale[1], scale,
                   crop_shape((rows, cols), LATERALITY, VIEW, PREPROCESSING))

    def centre(self, at_px: tuple[int, int]) -> tuple[int, int]:
        """The pixel of this grid whose centre is nearest to detector pixel `at_px`'s."""
        r, c = self._centres(np.asarray(at_px[0]), np.asarray(at_px[1]))
        return int(r), int(c)

    def _centres(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.rint((rows + 0.5) * self.scale[0] - 0.5).astype(np.int64),
                np.rint((cols + 0.5) * self.scale[1] - 0.5).astype(np.int64))

    def side(self, half_mm: float) -> int:
        """Pixels across a square ROI of half side `half_mm` (odd: it has a centre pixel)."""
        return 2 * math.ceil(half_mm / self.pitch_mm) + 1

    def fits(self, rows: np.ndarray, cols: np.ndarray, side: int) -> np.ndarray:
        """Whether a side x side ROI centred at each detector pixel (rows, cols) lies in the image."""
        r, c = self._centres(np.asarray(rows), np.asarray(cols))
        h = side // 2
        return (r >= h) & (r < self.shape[0] - h) & (c >= h) & (c < self.shape[1] - h)

    def cut(self, image: np.ndarray, at_px: tuple[int, int], side: int) -> np.ndarray:
        """The side x side ROI of `image` (this grid's) centred at detector pixel `at_px`."""
        if not self.fits(np.asarray(at_px[0]), np.asarray(at_px[1]), side):
            raise ValueError(f"a {side}-pixel ROI at {at_px} leaves the {self.pitch} image")
        r, c = self.centre(at_px)
        h = side // 2
        return image[r - h:r + h + 1, c - h:c + h + 1]

    def image(self, pixels: np.ndarray, bits_stored: int, window: tuple[float, float]) -> np.ndarray:
        """The decoded view as this pitch's observers see it: the stored values at the detector's,
        the CNN's input (normalised with the VOI window, resized, cropped) at the paper's."""
        if self.pitch is Pitch.DETECTOR:
            return pixels
        # Only the stored pixels that the kept crop averages over are normalised (the crop of a
        # left CC view starts at the top left corner), the rest left at 0: the same crop as from
        # the whole view normalised, for less than half the work.
        rows = min(pixels.shape[0], math.ceil(self.shape[0] / self.scale[0]) + 2)
        cols = min(pixels.shape[1], math.ceil(self.shape[1] / self.scale[1]) + 2)
        normalised = np.zeros(pixels.shape, dtype=np.float32)
        normalised[:rows, :cols] = normalise(pixels[:rows, :cols], bits_stored, "MONOCHROME2", window)
        return resize_and_crop(normalised, LATERALITY, VIEW, PREPROCESSING)


@dataclass(frozen=True)
class KnownSignal:
    """A lesion class's noise-free signal at each pitch, and how far it reaches (mm)."""

    rois: dict[Pitch, np.ndarray]
    reach_mm: float


def reference_pixel(detector: Detector) -> tuple[int, int]:
    """Where the known signal is rendered: well inside the paper's crop."""
    return detector.rows * 2 // 5, detector.columns // 4


@functools.cache
def known_signal(cls: LesionClass, vendor: str) -> KnownSignal:
    """The lesion rendered alone (flat background, no noise), cut as the ROIs are at each pitch."""
    detector = DETECTORS[vendor]
    at = reference_pixel(detector)
    delta = reference_delta(cls, detector, at)
    reach = support_radius_mm(delta, at, detector.pixel_spacing_mm)
    rois = {}
    for pitch in Pitch:
        grid = Grid.of(vendor, pitch)
        image = delta if pitch is Pitch.DETECTOR else resize_and_crop(delta, LATERALITY, VIEW,
                                                                       PREPROCESSING)
        rois[pitch] = np.array(grid.cut(image, at, grid.side(cls.roi_half_mm)), dtype=np.float64)
    return KnownSignal(rois, reach)


def draw_breast(detector: Detector, seed: np.random.SeedSequence
                ) -> tuple[BreastShape, BreastTissue]:
    """A CC outline and a breast's tissue, drawn as `phantom.study` draws a study's (its CC
    outline and its tissue parameters, the density category by the cohort's shares)."""
    rng = np.random.default_rng(seed)
    width = detector.columns * detector.pixel_spacing_mm
    height = detector.rows * detector.pixel_spacing_mm
    shape = BreastShape(
        view="CC", depth_mm=width * rng.uniform(0.42, 0.68),
        center_y_mm=height * rng.uniform(0.46, 0.54),
        half_height_up_mm=height * rng.uniform(0.32, 0.44),
        half_height_down_mm=height * rng.uniform(0.32, 0.44),
        thickness_mm=rng.uniform(38.0, 68.0),
        wobble=tuple((rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi)) for _ in range(4)),
        pectoral=None)
    category = str(rng.choice(list(DENSITY_CATEGORIES), p=DENSITY_SHARES))
    tissue = BreastTissue(
        density=DENSITY_CATEGORIES[category] * rng.uniform(0.85, 1.15) * rng.uniform(0.92, 1.08),
        texture_amplitude=rng.uniform(0.4, 0.7), patchiness=rng.uniform(0.6, 1.2),
        subcutaneous_fat_mm=rng.uniform(3.0, 10.0), retromammary_fat_mm=rng.uniform(4.0, 14.0))
    return shape, tissue


@dataclass(frozen=True)
class Placement:
    """One lesion of a view: its class (an index into the task's classes) and its centre pixel."""

    lesion: int
    row: int
    col: int

    @property
    def at(self) -> tuple[int, int]:
        return self.row, self.col


@dataclass(frozen=True)
class Footprint:
    """What a class occupies, in detector pixels: its ROI's half side and its signal's reach."""

    half: int
    reach: float
    sides: dict[Pitch, int]

    @classmethod
    def of(cls, lesion: LesionClass, vendor: str) -> Footprint:
        detector = DETECTORS[vendor]
        p = detector.pixel_spacing_mm
        paper = Grid.of(vendor, Pitch.PAPER)
        # the paper's pixels are ~3.3 detector pixels: one of them of margin on either grid
        margin = math.ceil(1.0 / min(paper.scale)) + 1
        sides = {pitch: Grid.of(vendor, pitch).side(lesion.roi_half_mm) for pitch in Pitch}
        return cls(math.ceil(lesion.roi_half_mm / p) + margin,
                   known_signal(lesion, vendor).reach_mm / p + margin, sides)


def _clear(rows: np.ndarray, cols: np.ndarray, mine: Footprint, at: tuple[int, int],
           other: Footprint) -> np.ndarray:
    """Which candidate centres keep `mine` apart from `other` placed at `at`: no shared ROI
    pixel, and neither signal inside the other's ROI."""
    dr, dc = np.abs(rows - at[0]), np.abs(cols - at[1])

    def outside(half: int, reach: float) -> np.ndarray:  # a disc of `reach` misses the square
        return np.hypot(np.maximum(dr - half, 0), np.maximum(dc - half, 0)) > reach

    apart = np.maximum(dr, dc) > mine.half + other.half
    return apart & outside(other.half, mine.reach) & outside(mine.half, other.reach)


def place(shape: BreastShape, vendor: str, classes: list[LesionClass], wanted: list[int],
          rng: np.random.Generator) -> list[Placement]:
    """Lesions of each class (up to `wanted[i]` of class i) at random non-overlapping positions
    of one view, the classes taking turns so that each spreads over many views."""
    detector = DETECTORS[vendor]
    p = detector.pixel_spacing_mm
    step = max(1, round(CANDIDATE_STEP_MM / p))
    grid_rows = np.arange(step // 2, detector.rows, step)
    grid_cols = np.arange(step // 2, detector.columns, step)
    inside = shape.radius(((grid_cols + 0.5) * p)[None, :], ((grid_rows + 0.5) * p)[:, None]) < INSIDE
    rows, cols = np.meshgrid(grid_rows, grid_cols, indexing="ij")
    order = rng.permutation(rows.size)
    rows, cols = rows.ravel()[order], cols.ravel()[order]
    feet = [Footprint.of(c, vendor) for c in classes]
    free = []
    for foot in feet:
        # the whole ROI inside the breast: the inside mask eroded by the ROI's half side
        reach = math.ceil(foot.half / step)
        whole = ndimage.minimum_filter(inside.astype(np.uint8), size=2 * reach + 1, mode="constant",
                                       cval=0).astype(bool).ravel()[order]
        for pitch in Pitch:
            whole &= Grid.of(vendor, pitch).fits(rows, cols, foot.sides[pitch])
        free.append(np.flatnonzero(whole))  # candidates still free, in the drawn order
    left = list(wanted)
    placed: list[Placement] = []
    turn = sorted((i for i in range(len(classes)) if left[i] > 0), key=lambda i: -feet[i].reach)
    while turn:
        for i in list(turn):
            if free[i].size == 0:
                turn.remove(i)
                continue
            at = int(rows[free[i][0]]), int(cols[free[i][0]])
            placed.append(Placement(i, *at))
            for j, foot in enumerate(feet):
                free[j] = free[j][_clear(rows[free[j]], cols[free[j]], foot, at, feet[i])]
            left[i] -= 1
            if left[i] == 0:
                turn.remove(i)
    return placed
