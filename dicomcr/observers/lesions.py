"""The lesions of the detectability task: finding types, their sizes, one instance each, its signal.

A task is signal-known-exactly: each finding type x size x contrast (a `LesionClass`) is one
lesion drawn once by the phantom's own `draw_lesion`, with its size set to a quantile of the
size distribution the phantom draws that finding from (estimated from `SIZE_SAMPLES` sizes
drawn by `draw_lesion` itself, so that nothing here repeats, or tunes, the phantom's numbers). Every
insertion of a class renders the same lesion (the same shape, spicules and calcification layout:
the same random stream); what changes from one position to the next is what the phantom's physics
makes of it there: a lesion replaces the tissue it occupies, so a mass is conspicuous in fat and
masked in dense tissue. The sizes of one finding share the instance (only the size differs), so
d' against size compares like with like.

`size_mm` is a diameter: twice a mass's radius, or each calcification's size in a cluster (the
phantom's `size_mm`). `contrast` multiplies the physical attenuation difference (the phantom's
`Difficulty`); 1 is the physics alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from ..phantom.anatomy import BreastShape
from ..phantom.lesions import Canvas, Lesion, draw_lesion, render_lesion
from ..phantom.params import Detector, Difficulty, Tissue

SIZE_SAMPLES = 4000
"""Sizes drawn (by as many `draw_lesion` calls as that takes: a cluster gives 5-30 at once) to
estimate a finding's size distribution: quantiles to about 1 % of its range."""
SIZE_SEED = 20_220_417  # fixed: the size distribution is the phantom's, not the run's
ROI_MARGIN = 1.5
"""A ROI's half side is 1.5 times the lesion's core radius (at least the core plus 2 mm): the
channels see the lesion and the background around it."""
PHYSICS = Tissue()
"""The phantom's tissue constants: every view of the task is rendered with them."""
REFERENCE_GLAND = 0.3
"""Fibroglandular fraction of the flat background the known signal is rendered on (its shape is
what the templates use; its scale does not matter to a linear observer)."""


class FindingType(StrEnum):
    """The phantom's finding types a CR can erase (named apart from `data.dataset.Finding`, what a
    breast shows).

    The cluster is the phantom's pleomorphic microcalcification cluster, the spiculated mass its
    malignant mass and the circumscribed mass its (benign) non-spiculated one."""

    CALCIFICATION_CLUSTER = "calcification_cluster"
    SPICULATED_MASS = "spiculated_mass"
    CIRCUMSCRIBED_MASS = "circumscribed_mass"

    @property
    def lesion_kind(self) -> str:
        """The phantom's name of the lesion (`draw_lesion`'s kind)."""
        return "pleomorphic_calcifications" if self is FindingType.CALCIFICATION_CLUSTER else self.value

    @property
    def is_mass(self) -> bool:
        return self is not FindingType.CALCIFICATION_CLUSTER

    @property
    def label(self) -> str:
        """How a figure or a report names it."""
        return self.value.replace("_", " ")


def _diameters(lesion: Lesion) -> list[float]:
    if lesion.calcifications:
        return [c.size_mm for c in lesion.calcifications]
    return [2.0 * lesion.radius_mm]


@functools.cache
def size_distribution(finding: FindingType) -> np.ndarray:
    """Sorted diameters (mm) of the finding as the phantom draws it (physical difficulty)."""
    rng = np.random.default_rng(SIZE_SEED)
    sizes: list[float] = []
    while len(sizes) < SIZE_SAMPLES:
        sizes += _diameters(draw_lesion(finding.lesion_kind, (0.5, 0.0, 0.0), Difficulty(), rng))
    return np.sort(np.asarray(sizes))


def size_at(finding: FindingType, quantile: float) -> float:
    """The diameter (mm) at `quantile` of the finding's size distribution, to 0.01 mm."""
    return round(float(np.quantile(size_distribution(finding), quantile)), 2)


@dataclass(frozen=True)
class LesionClass:
    """One finding type at one size and contrast: the same lesion at every position."""

    finding: FindingType
    size_quantile: float
    contrast: float
    seed: int  # the run's seed: the instance is drawn from it and the finding only

    @property
    def size_mm(self) -> float:
        return size_at(self.finding, self.size_quantile)

    @property
    def difficulty(self) -> Difficulty:
        return Difficulty(mass_contrast=self.contrast, calc_contrast=self.contrast)

    @property
    def name(self) -> str:
        """e.g. 'spiculated_mass 11 mm', with the contrast when it is not the physical one."""
        text = f"{self.finding.value} {self.size_mm:g} mm"
        return text if self.contrast == 1.0 else f"{text} x{self.contrast:g}"

    def _stream(self, purpose: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed, spawn_key=(0xD7EC, list(FindingType).index(self.finding),
                                                             purpose))

    @functools.cached_property
    def instance(self) -> Lesion:
        """The lesion (at the frame's origin), drawn by the phantom, its size set to `size_mm`."""
        drawn = draw_lesion(self.finding.lesion_kind, (0.0, 0.0, 0.0), Difficulty(),
                            np.random.default_rng(self._stream(0)))
        if drawn.calcifications:
            return replace(drawn, calcifications=tuple(replace(c, size_mm=self.size_mm)
                                                       for c in drawn.calcifications))
        return replace(drawn, radius_mm=self.size_mm / 2.0)

    def render_stream(self) -> np.random.Generator:
        """The random stream of the rendering (orientation, spicules): the same at every insertion."""
        return np.random.default_rng(self._stream(1))

    @property
    def core_radius_mm(self) -> float:
        """How far the lesion's body reaches from its centre in a CC view: a mass's semi-major
        axis, a cluster's farthest calcification (its edge). Spicules reach beyond (`reach`)."""
        lesion = self.instance
        if lesion.calcifications:
            return max(float(np.hypot(c.offset_mm[0], c.offset_mm[1])) + c.size_mm / 2.0
                       for c in lesion.calcifications)
        return lesion.radius_mm * float(np.sqrt(lesion.aspect))

    @property
    def roi_half_mm(self) -> float:
        """Half the side of the square ROI around the lesion's centre."""
        core = self.core_radius_mm
        return max(ROI_MARGIN * core, core + 2.0)

    def render(self, shape: BreastShape, at_mm: tuple[float, float], canvas: Canvas,
               background_mu, physics: Tissue, delta: np.ndarray, mask: np.ndarray) -> None:
        """Add this lesion, centred at canonical `at_mm` (x, y) of the view, to `delta` (in place)."""
        lesion = replace(self.instance, position=frame_position(shape, *at_mm))
        render_lesion(lesion, shape, canvas, background_mu, physics, self.difficulty, delta, mask,
                      self.render_stream())


def frame_position(shape: BreastShape, x: float, y: float) -> tuple[float, float, float]:
    """The point (u, m, s) of the 3-D breast frame that a CC view shows at canonical (x, y) mm."""
    if shape.view != "CC":
        raise ValueError("lesions are placed in CC views")
    u = x / shape.depth_mm
    reach = np.sqrt(max(1.0 - u * u, 1e-12))
    half = shape.half_height_up_mm if y < shape.center_y_mm else shape.half_height_down_mm
    m = (shape.center_y_mm - y) / (half * reach)
    return float(u), float(m), 0.0


def reference_shape(detector: Detector) -> BreastShape:
    """A plain CC outline filling the detector, to render a lesion on its own (the known signal)."""
    width = detector.columns * detector.pixel_spacing_mm
    height = detector.rows * detector.pixel_spacing_mm
    return BreastShape(view="CC", depth_mm=0.6 * width, center_y_mm=0.5 * height,
                       half_height_up_mm=0.4 * height, half_height_down_mm=0.4 * height,
                       thickness_mm=50.0, wobble=(), pectoral=None)


def reference_delta(cls: LesionClass, detector: Detector, at_px: tuple[int, int],
                    physics: Tissue = PHYSICS) -> np.ndarray:
    """The lesion's noise-free signal (log attenuation) on a full view of `detector`, centred on
    pixel `at_px` (row, column), over a flat background of `REFERENCE_GLAND` tissue."""
    canvas = Canvas(detector.rows, detector.columns, detector.pixel_spacing_mm)
    delta = np.zeros((canvas.rows, canvas.columns), dtype=np.float32)
    mask = np.zeros(delta.shape, dtype=bool)
    mu = physics.fat + (physics.gland - physics.fat) * REFERENCE_GLAND
    p = detector.pixel_spacing_mm
    cls.render(reference_shape(detector), ((at_px[1] + 0.5) * p, (at_px[0] + 0.5) * p), canvas,
               lambda x, y: np.full(np.shape(x), mu, dtype=np.float32), physics, delta, mask)
    return delta


def support_radius_mm(delta: np.ndarray, at_px: tuple[int, int], pitch_mm: float) -> float:
    """How far from `at_px` the lesion's signal reaches (|delta| above 0.1 % of its peak)."""
    peak = float(np.abs(delta).max())
    rows, cols = np.nonzero(np.abs(delta) > 1e-3 * peak)
    if rows.size == 0:
        return 0.0
    return float(np.hypot(rows - at_px[0], cols - at_px[1]).max() + 1.0) * pitch_mm
