"""The node's inference step: one study in, its saliency SCs and Structured Report out.

Runs in a worker process; each model file is loaded once per process and kept. The logic is in
dicomcr.inference (classify, write_objects); this is the per-process cache around it.
"""

from __future__ import annotations

from pathlib import Path

from dicomcr.inference.classify import Classifier
from dicomcr.inference.objects import Written, write_objects

_loaded: dict[tuple[str, str], Classifier] = {}


def classifier(model: Path, device: str) -> Classifier:
    """The model at `model`, loaded on first use in this process."""
    key = (str(model), device)
    if key not in _loaded:
        _loaded[key] = Classifier(model, device)
    return _loaded[key]


def infer_study(files: list[Path], model: Path, device: str, input_cr: str, out: Path
                ) -> tuple[list[Written], dict[str, float]]:
    """Classify one study's images and write its objects; also return the probabilities."""
    loaded = classifier(model, device)
    result = loaded.classify(files)
    written = write_objects(loaded, result, input_cr, out)
    probabilities = {b.laterality: b.probability for b in result.breasts}
    return written, probabilities
