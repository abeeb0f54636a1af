"""Classifiers of the paper (CNN3, ResNet18) and the model file format.

`build_model` is the one place an architecture name and its spec become a network: training,
model files and inference all go through it.
"""

from __future__ import annotations

from torch import nn

from .cnn3 import CNN3, CNN3Spec
from .resnet18 import ResNet18, ResNet18Spec

ARCHITECTURES = ("cnn3", "resnet18")


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


__all__ = ["ARCHITECTURES", "CNN3", "CNN3Spec", "ResNet18", "ResNet18Spec", "build_model"]
