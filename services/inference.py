"""The node's inference step: one study in, its saliency SCs and Structured Report out.

Runs in a worker process; each model file is loaded once per process and kept. The logic is in
dicomcr.inference (classify, write_objects); this is the per-process cache around it. torch is
imported on the first call, not with this module: the node and its transcoding workers (spawned
processes import the node's modules) start in a second instead of several, and a transcoding
worker that died is replaced as fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dicomcr.outputs import disk_full_said_plainly

if TYPE_CHECKING:
    from dicomcr.inference.classify import Classifier
    from dicomcr.inference.objects import Written

_loaded: dict[tuple[str, str], Classifier] = {}


def classifier(model: Path, device: str) -> Classifier:
    """The model at `model`, loaded on first use in this process."""
    from dicomcr.inference.classify import Classifier

    key = (str(model), device)
    if key not in _loaded:
        _loaded[key] = Classifier(model, device)
    return _loaded[key]


def infer_study(files: list[Path], model: Path, device: str, input_cr: str, out: Path
                ) -> tuple[list[Written], dict[str, float]]:
    """Classify one study's images and write its objects; also return the probabilities."""
    from dicomcr.inference.objects import write_objects

    loaded = classifier(model, device)
    result = loaded.classify(files)
    try:
        written = write_objects(loaded, result, input_cr, out)
    except Exception as exc:  # a full disk reaches the node as OSError(ENOSPC): a retry later
        plain = disk_full_said_plainly(exc)
        if plain is exc:
            raise
        raise plain from None
    probabilities = {b.laterality: b.probability for b in result.breasts}
    return written, probabilities
