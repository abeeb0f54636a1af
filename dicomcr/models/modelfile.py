"""The model file (.dcmcr): safetensors weights plus JSON metadata, loaded without running code.

Metadata: format version, architecture and its spec, preprocessing (with the input geometry the
model was trained at: the canvas at the 30 % pitch and the model input), the CRs trained on, the
operating threshold, a fingerprint of the training data, validation metrics, package versions. A
corrupt, truncated or foreign file, or one whose recorded input differs from its network's, is
refused with a clear ModelFileError. Version 1 files (no threshold, no canvas) are refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from dicomcr import __version__

from ..outputs import partial_name
from . import ARCHITECTURES, build_model

FORMAT = "dicomcr-model"
FORMAT_VERSION = 2  # 2: the operating threshold and the input geometry are recorded


class ModelFileError(ValueError):
    """A model file that cannot be used; the message says why."""


@dataclass
class ModelInfo:
    """Everything a model file says about its model besides the weights."""

    architecture: str
    spec: dict
    preprocessing: dict
    trained_crs: list[float]
    data_fingerprint: str
    threshold: float  # the operating point: P(malignant) >= threshold reads as malignant
    validation: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    def as_json(self, path: Path) -> dict:
        """Everything the model file `path` records, with each NaN or infinity as None (strict
        JSON)."""
        return _finite({"file": str(path), "format_version": FORMAT_VERSION, **self.__dict__})


def _finite(value):
    """`value` with every NaN or infinity as None, in dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _geometry_problem(info: ModelInfo) -> str | None:
    """Why the recorded preprocessing cannot feed the network, or None."""
    canvas = info.preprocessing.get("canvas")
    size = info.preprocessing.get("input_size") or canvas
    if canvas is None:
        return "the model file records no input canvas (preprocessing.canvas)"
    if list(size) != list(info.spec.get("input_size", [])):
        return (f"the preprocessing gives {list(size)} inputs, the network takes "
                f"{info.spec.get('input_size')}")
    return None


def save_model(model: torch.nn.Module, info: ModelInfo, path: Path) -> None:
    """Write weights and metadata to `path` (atomically)."""
    if info.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {info.architecture!r}")
    problem = _geometry_problem(info)
    if problem:
        raise ValueError(problem)
    info.versions = {"dicomcr": __version__, "torch": torch.__version__, **info.versions}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "info": json.dumps(info.__dict__, sort_keys=True)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    partial = partial_name(path)
    safetensors.torch.save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)


def load_model(path: Path) -> tuple[torch.nn.Module, ModelInfo]:
    """Read a model file back: the model in eval mode and its metadata."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except FileNotFoundError as exc:
        raise ModelFileError(f"{path}: no such model file") from exc
    except Exception as exc:  # safetensors raises its own kinds on corrupt headers
        raise ModelFileError(f"{path}: not a readable model file ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a dicomcr model file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ModelFileError(f"{path}: model file version {metadata.get('format_version')}, "
                             f"this dicomcr reads version {FORMAT_VERSION}: train it again")
    try:
        info = ModelInfo(**json.loads(metadata["info"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: its metadata is damaged ({exc})") from exc
    problem = _geometry_problem(info)
    if problem:
        raise ModelFileError(f"{path}: {problem}")
    try:
        model = build_model(info.architecture, info.spec)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: its weights do not fit a {info.architecture} "
                             f"({str(exc).splitlines()[0]})") from exc
    model.eval()
    return model, info
