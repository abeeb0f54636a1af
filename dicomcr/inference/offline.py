"""`dicomcr saliency` as a function: models x CRs on one study folder, DICOM objects and Fig. 3.

Each view is compressed once for all CRs (the transcoder's ladder) and decoded; every model
classifies the study at every CR and writes its saliency SCs and SR under OUT/<model>/CR<cr>/;
one PNG shows the image, the ground-truth mask when the dataset has one, and every map.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..codec.j2k import cr_short, decode, encode_ladder
from ..data.dataset import mask_beside
from ..data.preprocess import normalise_image
from ..dicom.source import InputError, SourceImage, read_source
from ..explain.figure import saliency_figure
from ..models import Device
from ..models.modelfile import load_model
from ..outputs import output_folder
from ..transcode import find_inputs
from .classify import Classifier, view_of
from .objects import Written, write_objects

if TYPE_CHECKING:
    from rich.table import Table


@dataclass
class OfflineResult:
    """What the saliency command did: probabilities, files written, the figure, problems."""

    probabilities: dict[tuple[str, float, str], float] = field(default_factory=dict)
    written: list[Written] = field(default_factory=list)
    figure: Path | None = None
    problems: list[str] = field(default_factory=list)

    def table(self, study: Path) -> Table:
        """The probability of each breast per model and CR, as a rich table for a terminal."""
        from rich.table import Table

        table = Table(title=f"P(malignant) of each breast of {study}")
        for name in ("model", "CR", "breast", "probability"):
            table.add_column(name)
        for (model, cr, side), value in sorted(self.probabilities.items()):
            table.add_row(model, f"{cr:g}", side, f"{value:.3f}")
        return table


def at_crs(sources: list[SourceImage], crs: list[float]) -> dict[float, list[SourceImage]]:
    """Every image at every CR (1 = as read), all lossy CRs of a view from one encode."""
    out: dict[float, list[SourceImage]] = {cr: [] for cr in crs}
    lossy = [cr for cr in crs if cr != 1.0]
    for source in sources:
        if 1.0 in out:
            out[1.0].append(source)
        if lossy:
            for item in encode_ladder(source.pixels, source.bits_stored, lossy,
                                      source.bits_allocated):
                out[item.target_cr].append(replace(source, pixels=decode(item.codestream)))
    return out


def model_names(models: list[Path]) -> list[str]:
    """Each model's file name, with its folder's name in front where two files share one
    (results/folds/M-CR1/fold0.dcmcr and .../M-CR20/fold0.dcmcr: M-CR1-fold0, M-CR20-fold0)."""
    stems = [Path(m).stem for m in models]
    return [f"{Path(m).parent.name}-{stem}" if stems.count(stem) > 1 else stem
            for m, stem in zip(models, stems, strict=True)]


def saliency_study(models: list[Path], study: Path, crs: list[float] | None, out: Path,
                   device: Device | str = Device.CPU) -> OfflineResult:
    """Run every model at every CR (None: every CR a model was trained at) on the study in the
    folder (or file) `study`; write the objects and the figure into `out`. ValueError (a
    ModelFileError for a model file) for what cannot be read or written."""
    if not models:
        raise ValueError("give at least one model file and then the study folder")
    trained = sorted({c for m in models for c in load_model(m)[1].trained_crs})  # each readable
    crs = crs or trained
    try:
        files = [path for path, _ in find_inputs(study)]
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from exc
    output_folder(out)
    result = OfflineResult()
    sources = []
    for path in files:
        try:
            source = read_source(path)
        except InputError as exc:
            result.problems.append(f"{path}: {exc}")
            continue
        if view_of(source) is None:
            result.problems.append(f"{path}: not a CC or MLO view; left out")
            continue
        sources.append(source)
    if not sources:
        raise ValueError("no CC or MLO image to explain in the study folder"
                         + (f" ({result.problems[0]})" if result.problems else ""))
    images = at_crs(sources, crs)
    maps: list[tuple[str, dict[tuple[str, str], np.ndarray]]] = []
    for model, name in zip(models, model_names(models), strict=True):
        classifier = Classifier(model, device, name)
        for cr in crs:
            study = classifier.classify_sources(images[cr])
            result.written += write_objects(classifier, study, f"{cr:g}",
                                            Path(out) / classifier.name / f"CR{cr:g}")
            heats = {}
            for breast in study.breasts:
                result.probabilities[(classifier.name, cr, breast.laterality)] = breast.probability
                for name, view in breast.views.items():
                    heats[(breast.laterality, name)] = view.heat
            maps.append((f"{classifier.name}\nCR {cr_short(cr)}", heats))
    result.figure = Path(out) / "saliency.png"
    _figure(sources, maps, result, result.figure)
    return result


def _figure(sources: list[SourceImage], maps: list, result: OfflineResult, path: Path) -> None:
    """The breast with a lesion mask, else the one the models find most suspicious."""
    views = {view_of(s): s for s in sources}
    masks = {key: mask_beside(s.path) for key, s in views.items()}
    masked = [key[0] for key, m in masks.items()
              if m is not None and (np.asarray(Image.open(m)) > 0).any()]
    suspicious = max(result.probabilities.items(), key=lambda item: item[1])[0][2]
    side = masked[0] if masked else suspicious
    rows, columns = [], []
    for name in ("CC", "MLO"):
        source = views.get((side, name))
        if source is None:
            continue
        mask = masks.get((side, name))
        rows.append((f"{side}{name}", normalise_image(source.pixels, source.dataset),
                     (np.asarray(Image.open(mask)) > 0) if mask is not None else None))
    for title, heats in maps:
        columns.append((title, {f"{side}{n}": heats[(side, n)] for n in ("CC", "MLO")
                                if (side, n) in heats}))
    probabilities = ", ".join(f"{m} CR {cr_short(c)}: {p:.2f}"
                              for (m, c, s), p in result.probabilities.items() if s == side)
    saliency_figure(rows, columns, path,
                    f"{'left' if side == 'L' else 'right'} breast; P(malignant) {probabilities}"
                    " (not for diagnostic use)")
