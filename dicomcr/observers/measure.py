"""One view pair through the codec: render it with and without its lesions, compress the whole of
each at every CR, decode, cut the ROIs at both pitches and keep what the observers need of them.

The pair shares its anatomy and its quantum noise (the same random streams): the view without
lesions is the view with them minus the lesions, except behind a lesion, where fewer photons
arrive and the noise is larger, as the phantom's physics has it. Each image is encoded once for
all CRs (the codec's ladder) and each CR decoded: the CR belongs to the whole image.

What is kept of a ROI is its projection on the observers' templates (`templates`): the LG (or
convolutional LG) channels, the DoG channels and the NPWE template, in that order, columns of one
matrix per lesion class and pitch. The features of a view are written to one file, atomically,
by the process that computed them, so a run killed at any point keeps every finished view.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..codec.j2k import CODEC_REVISION, decode, encode_ladder
from ..phantom.anatomy import breast_fields
from ..phantom.detector import log_signal, presentation_curve, registered_range, to_pixels, voi_window
from ..phantom.lesions import Canvas
from ..phantom.params import DETECTORS, Difficulty, Tissue
from ..phantom.study import LOW_RES_SPACING_MM
from .channels import (
    LG_CHANNELS,
    DogBands,
    EyeFilter,
    convolutional_lg,
    difference_of_gaussians,
    laguerre_gauss,
    npwe,
)
from .geometry import Grid, Pitch, Placement, draw_breast, known_signal
from .lesions import PHYSICS, LesionClass

OBSERVERS_REVISION = 1
"""Raised whenever a change here, in the templates or in the placements gives a view other
features: a view file made before is then recomputed (as `CODEC_REVISION` for the codec)."""
CLG_WIDTH = 0.5
"""Convolutional LG: u_0 falls to 1/e at half the mass's radius (a = sqrt(pi) x 0.5 x radius),
so u_0 * s keeps the mass's outline and margin and the higher orders their radial detail."""
LG_WIDTH = 1.0
"""Plain LG (the cluster): u_0 falls to 1/e at the cluster's radius."""


class ObserverKind(StrEnum):
    """The model observers: two channelized Hotelling observers and the NPWE."""

    CHO_LG = "cho_lg"  # Laguerre–Gauss channels (convolutional LG for masses)
    CHO_DOG = "cho_dog"  # difference-of-Gaussians channels convolved with the signal
    NPWE = "npwe"  # non-prewhitening matched filter with an eye filter

    @property
    def trained(self) -> bool:
        """Whether its template is trained on ROIs (the CHOs) or fixed by the known signal."""
        return self is not ObserverKind.NPWE


@dataclass(frozen=True)
class Templates:
    """The observers' templates for one lesion class at one pitch, as one matrix's columns."""

    matrix: np.ndarray  # (ROI pixels, columns)
    side: int
    columns: dict[ObserverKind, tuple[int, int]]  # [start, stop) of each observer's columns


def column_layout(vendor: str, pitch: Pitch) -> dict[ObserverKind, tuple[int, int]]:
    """[start, stop) of each observer's columns among a ROI's features at `pitch` (the DoG
    bands that the pitch cannot hold are left out, so the layout depends on the pitch)."""
    dog = len(DogBands().centres(Grid.of(vendor, pitch).pitch_mm))
    stops = np.cumsum([LG_CHANNELS, dog, 1]).tolist()
    return {ObserverKind.CHO_LG: (0, stops[0]), ObserverKind.CHO_DOG: (stops[0], stops[1]),
            ObserverKind.NPWE: (stops[1], stops[2])}


@functools.cache
def templates(cls: LesionClass, vendor: str, pitch: Pitch) -> Templates:
    """The channels and the NPWE template of a class at a pitch, from its known signal."""
    signal = known_signal(cls, vendor).rois[pitch]
    side = signal.shape[0]
    pitch_mm = Grid.of(vendor, pitch).pitch_mm
    radius_px = cls.core_radius_mm / pitch_mm
    if cls.finding.is_mass:
        lg = convolutional_lg(signal, np.sqrt(np.pi) * CLG_WIDTH * radius_px)
    else:
        lg = laguerre_gauss(side, np.sqrt(np.pi) * LG_WIDTH * radius_px)
    dog = difference_of_gaussians(signal, pitch_mm, DogBands())
    npwe_column = npwe(signal, EyeFilter())
    columns = column_layout(vendor, pitch)
    # float32: a ROI's projection loses ~1e-7 of itself, far below any lesion's share of it
    return Templates(np.hstack([lg, dog, npwe_column]).astype(np.float32), side, columns)


@dataclass(frozen=True)
class ViewTask:
    """One view pair to measure, and where its features go."""

    vendor: str
    index: int  # of the view among the vendor's
    seed: int
    classes: tuple[LesionClass, ...]
    placements: tuple[Placement, ...]
    crs: tuple[float, ...]  # 1 (the original) and the lossy CRs, ascending
    pitches: tuple[Pitch, ...]
    examples: tuple[int, ...]  # placements whose ROIs at every CR are kept, for the figure
    path: Path

    @property
    def identity(self) -> str:
        """A hash of everything the view's features depend on."""
        fields = {k: v for k, v in asdict(self).items() if k != "path"}
        text = json.dumps({"task": fields, "codec": CODEC_REVISION, "observers": OBSERVERS_REVISION},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def stream(self, purpose: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed, spawn_key=(sorted(DETECTORS).index(self.vendor),
                                                            self.index, purpose))


def render_pair(task: ViewTask, physics: Tissue = PHYSICS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(without lesions, with lesions, breast mask): the stored pixels of the pair
    (MONOCHROME2), rendered as `phantom.study` renders a view."""
    detector = DETECTORS[task.vendor]
    shape, tissue = draw_breast(detector, task.stream(0))
    factor = max(1, round(LOW_RES_SPACING_MM / detector.pixel_spacing_mm))
    canvas = Canvas(detector.rows, detector.columns, detector.pixel_spacing_mm)
    low = canvas.spacing_mm * factor
    grid = (-(-canvas.rows // factor), -(-canvas.columns // factor))
    fields = breast_fields(shape, tissue, physics, grid, low, np.random.default_rng(task.stream(1)))

    def background_mu(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        where = np.stack([y.ravel() / low - 0.5, x.ravel() / low - 0.5])
        g = ndimage.map_coordinates(fields.gland, where, order=1, mode="nearest")
        return (physics.fat + (physics.gland - physics.fat) * g).reshape(x.shape)

    delta = np.zeros((canvas.rows, canvas.columns), dtype=np.float32)
    mask = np.zeros(delta.shape, dtype=bool)
    p = canvas.spacing_mm
    for placed in task.placements:
        task.classes[placed.lesion].render(shape, ((placed.col + 0.5) * p, (placed.row + 0.5) * p),
                                           canvas, background_mu, physics, delta, mask)
    curve = presentation_curve(fields, registered_range(fields, detector, physics))
    images = []
    for lesions in (np.zeros_like(delta), delta):
        signal, breast = log_signal(fields, lesions, factor, detector, physics, Difficulty(),
                                    np.random.default_rng(task.stream(2)))
        images.append(to_pixels(signal, curve, detector))
        del signal
    return images[0], images[1], breast


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary name beside `path`, then a rename: all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)


def measure_view(task: ViewTask) -> dict[str, float]:
    """Render, compress, decode and project one view pair; write its features to `task.path`.

    The file holds `features_<pitch>` (placements, CRs, [absent, present], template columns),
    `achieved` (CRs, [absent, present]) and `example_<k>_<pitch>` (CRs, side, side: the
    signal-present ROI of example placement k at every CR). Returns the CPU seconds of each stage."""
    detector = DETECTORS[task.vendor]
    seconds = {"render": 0.0, "ladder": 0.0, "observers": 0.0}
    start = time.process_time()
    absent, present, breast = render_pair(task)
    seconds["render"] = time.process_time() - start
    lossy = [cr for cr in task.crs if cr != 1.0]
    n, c = len(task.placements), len(task.crs)
    feature = {pitch: np.full((n, c, 2, _width(task, pitch)), np.nan) for pitch in task.pitches}
    examples: dict[str, np.ndarray] = {}
    achieved = np.ones((c, 2))
    for which, pixels in enumerate((absent, present)):
        window = voi_window(pixels, breast)
        start = time.process_time()
        encoded = {e.target_cr: e for e in encode_ladder(pixels, detector.bits_stored, lossy)} \
            if lossy else {}
        seconds["ladder"] += time.process_time() - start
        for k, cr in enumerate(task.crs):
            start = time.process_time()
            decoded = pixels if cr == 1.0 else decode(encoded[cr].codestream)
            if cr != 1.0:
                achieved[k, which] = encoded[cr].achieved_cr
            seconds["ladder"] += time.process_time() - start
            start = time.process_time()
            for pitch in task.pitches:
                grid = Grid.of(task.vendor, pitch)
                image = grid.image(decoded, detector.bits_stored, window)
                for i, placed in enumerate(task.placements):
                    t = templates(task.classes[placed.lesion], task.vendor, pitch)
                    roi = grid.cut(image, placed.at, t.side)
                    values = roi.astype(np.float32).ravel() @ t.matrix
                    feature[pitch][i, k, which, :values.size] = values
                    if which == 1 and i in task.examples:  # stored pixels, or the CNN's [0, 1]
                        key = f"example_{i}_{pitch.value}"
                        if key not in examples:
                            examples[key] = np.zeros((c, *roi.shape), dtype=roi.dtype
                                                     if pitch is Pitch.DETECTOR else np.float16)
                        examples[key][k] = roi
            seconds["observers"] += time.process_time() - start
    arrays = {f"features_{pitch.value}": f for pitch, f in feature.items()}
    placements = np.array([[p.lesion, p.row, p.col] for p in task.placements], dtype=np.int64)
    _save(task.path, {"identity": np.array(task.identity), "placements": placements.reshape(-1, 3),
                      "achieved": achieved, **arrays, **examples})
    return seconds


def _width(task: ViewTask, pitch: Pitch) -> int:
    """Template columns at `pitch` (the feature array's last axis)."""
    return column_layout(task.vendor, pitch)[ObserverKind.NPWE][1]
