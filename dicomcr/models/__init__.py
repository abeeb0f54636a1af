"""Classifiers of the paper (CNN3, ResNet18) and the model file format.

`build_model` is the one place an architecture name and its spec become a network: training,
model files and inference all go through it.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import nn

from .cnn3 import CNN3, CNN3Spec
from .resnet18 import ResNet18, ResNet18Spec


class Architecture(StrEnum):
    """The classifiers of the paper; the value is the name a model file records."""

    CNN3 = "cnn3"
    RESNET18 = "resnet18"


ARCHITECTURES = tuple(a.value for a in Architecture)


def pick_device(choice: str) -> torch.device:
    """auto (CUDA when present, else the CPU), cpu or cuda; cuda without a GPU is refused."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked, but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def build_model(architecture: str, spec: dict) -> nn.Module:
    """A freshly initialised network of `architecture` from its spec (as saved in a model file)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    try:
        if architecture == "cnn3":
            return CNN3(CNN3Spec(**values))
        if architecture == "resnet18":
            return ResNet18(ResNet18Spec(**values))
    except TypeError as exc:
        raise ValueError(f"bad {architecture} spec {spec}: {exc}") from exc
    raise ValueError(f"unknown architecture {architecture!r}; choose one of "
                     f"{', '.join(ARCHITECTURES)}")


__all__ = ["ARCHITECTURES", "CNN3", "Architecture", "CNN3Spec", "ResNet18", "ResNet18Spec",
           "build_model", "pick_device"]
