"""Classify a study's breasts with a model file, and explain each with Grad-CAM on every view.

The image classified is the one given (in the node: the file at the site's policy CR, what the
archive holds); it is not compressed again. The image goes through the model file's own
preprocessing; a view whose crop does not fit the model's canvas (a larger detector than the
model was trained on) is refused with a GeometryError that says so. Grad-CAM (dicomcr.explain)
is upsampled to the input and put back on each view's full-size pixels.
A breast with one view missing is classified with the present view in both halves of the input
(said in the result); a study is the most suspicious of its breasts.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import (
    Preprocessing,
    breast_input,
    normalise_image,
    resize_and_crop,
    to_view,
)
from ..dicom.source import InputError, SourceImage, read_source
from ..explain.gradcam import grad_cam
from ..models import pick_device
from ..models.modelfile import load_model

VIEWS = ("CC", "MLO")


@dataclass
class View:
    """One decoded view of a study, and the heat map Grad-CAM gives it (full size, 0..1)."""

    source: SourceImage
    laterality: str
    view: str
    heat: np.ndarray | None = None


@dataclass
class BreastResult:
    laterality: str
    probability: float
    views: dict[str, View]
    missing: tuple[str, ...] = ()


@dataclass
class StudyResult:
    study_uid: str
    breasts: list[BreastResult]
    problems: list[str] = field(default_factory=list)  # files that are not a CC or MLO view

    @property
    def probability(self) -> float:
        return max(b.probability for b in self.breasts)

    @property
    def missing_views(self) -> list[str]:
        present = {b.laterality for b in self.breasts}
        absent = [f"{side}{view}" for side in "LR" if side not in present for view in VIEWS]
        return absent + [f"{b.laterality}{v}" for b in self.breasts for v in b.missing]


def view_of(source: SourceImage) -> tuple[str, str] | None:
    """(laterality, CC|MLO) from the header, or None for any other projection."""
    ds = source.dataset
    side = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()
    position = str(ds.get("ViewPosition", "")).upper()
    if side not in ("L", "R") or position not in VIEWS:
        return None
    return side, position


class Classifier:
    """A model file loaded once; `classify` runs one study."""

    def __init__(self, path: Path, device: str = "auto", name: str | None = None) -> None:
        self.path = Path(path)
        self._name = name
        self.network, self.info = load_model(self.path)
        self.preprocessing = Preprocessing.from_dict(self.info.preprocessing)
        self.device = pick_device(device)
        self.network.to(self.device).eval()
        self.version = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]

    @property
    def name(self) -> str:
        """What the SCs and the SR call the model: given, else the file's name."""
        return self._name or self.path.stem

    @property
    def threshold(self) -> float:
        """The operating threshold the model file records (chosen on validation data)."""
        return float(self.info.threshold)

    def _input(self, view: View) -> np.ndarray:
        image = normalise_image(view.source.pixels, view.source.dataset)
        return resize_and_crop(image, view.laterality, view.view, self.preprocessing)

    def classify(self, files: list[Path], saliency: bool = True) -> StudyResult:
        """Probabilities per breast (and heat maps per view) for the images of one study."""
        sources, problems = [], []
        for path in files:
            try:
                sources.append(read_source(Path(path)))
            except InputError as exc:  # e.g. a colour Secondary Capture in the study
                problems.append(f"{path}: {exc}; not classified")
        return self.classify_sources(sources, saliency, problems)

    def classify_sources(self, sources: list[SourceImage], saliency: bool = True,
                         problems: list[str] | None = None) -> StudyResult:
        """As `classify`, for images already decoded (e.g. compressed at a CR first)."""
        by_side: dict[str, dict[str, View]] = defaultdict(dict)
        problems, study_uids = list(problems or []), set()
        for source in sources:
            path = source.path
            study_uids.add(str(source.dataset.StudyInstanceUID))
            found = view_of(source)
            if found is None:
                problems.append(f"{path}: not a CC or MLO view with a laterality; not classified")
                continue
            side, position = found
            by_side[side][position] = View(source, side, position)
        if len(study_uids) > 1:
            raise ValueError(f"the files belong to {len(study_uids)} studies, not one")
        if not by_side:
            raise ValueError("no CC or MLO view to classify" + (f" ({problems[0]})" if problems
                                                                else ""))
        sides = sorted(by_side.items())
        prepared = [self._prepare(views) for _, views in sides]
        batch = torch.from_numpy(np.stack([x for x, _ in prepared])).float()[:, None]
        batch = batch.to(self.device)
        with torch.no_grad():  # the study's breasts in one batch
            probabilities = torch.sigmoid(self.network(batch)).float().cpu().numpy()
        breasts = []
        for i, ((side, views), (_, missing)) in enumerate(zip(sides, prepared, strict=True)):
            if saliency:
                self._explain(side, views, batch[i:i + 1], missing)
            breasts.append(BreastResult(side, float(probabilities[i]), views, missing))
        return StudyResult(study_uids.pop(), breasts, problems)

    def _prepare(self, views: dict[str, View]) -> tuple[np.ndarray, tuple[str, ...]]:
        """The breast's model input and its missing view."""
        crops = {v: self._input(views[v]) for v in VIEWS if v in views}
        missing = tuple(v for v in VIEWS if v not in views)
        cc = crops.get("CC", crops.get("MLO"))
        mlo = crops.get("MLO", crops.get("CC"))
        return breast_input(cc, mlo, self.preprocessing), missing

    def _explain(self, side: str, views: dict[str, View], x: torch.Tensor,
                 missing: tuple[str, ...]) -> None:
        """Grad-CAM of one breast's input, put back on each of its views."""
        cam = grad_cam(self.network, x)
        for name, view in views.items():
            half = "CC" if missing else name  # one view filled both halves
            view.heat = to_view(cam, view.source.pixels.shape, side, name, self.preprocessing,
                                half)
