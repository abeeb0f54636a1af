"""Classifiers of the paper (CNN3, ResNet18) and the model file format.

`build_model` is the one place an architecture name and its spec become a network: training,
model files and inference all go through it. Importing the package does not import torch (the
command line offers `Architecture` and `Device` as it starts): the networks and torch are imported
when first used (`from dicomcr.models import CNN3` works as ever).
"""

from __future__ import annotations

import importlib
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .cnn3 import CNN3, CNN3Spec
    from .resnet18 import ResNet18, ResNet18Spec


class Architecture(StrEnum):
    """The classifiers of the paper; the value is the name a model file records."""

    CNN3 = "cnn3"
    RESNET18 = "resnet18"


ARCHITECTURES = tuple(a.value for a in Architecture)


class Device(StrEnum):
    """Where a network runs: AUTO is CUDA when present, else the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def pick_device(choice: Device | str) -> torch.device:
    """auto (CUDA when present, else the CPU), cpu or cuda; cuda without a GPU is refused."""
    import torch

    if choice not in tuple(Device):
        raise ValueError(f"device must be auto, cpu or cuda, got {choice!r}")
    if choice == Device.CUDA and not torch.cuda.is_available():
        raise ValueError("--device cuda asked, but no CUDA device is available")
    if choice == Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(choice))


def build_model(architecture: str, spec: dict) -> nn.Module:
    """A freshly initialised network of `architecture` from its spec (as saved in a model file)."""
    from .cnn3 import CNN3, CNN3Spec
    from .resnet18 import ResNet18, ResNet18Spec

    values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    try:
        if architecture == Architecture.CNN3:
            return CNN3(CNN3Spec(**values))
        if architecture == Architecture.RESNET18:
            return ResNet18(ResNet18Spec(**values))
    except TypeError as exc:
        raise ValueError(f"bad {architecture} spec {spec}: {exc}") from exc
    raise ValueError(f"unknown architecture {architecture!r}; choose one of "
                     f"{', '.join(ARCHITECTURES)}")


_NETWORKS = {"CNN3": "cnn3", "CNN3Spec": "cnn3", "ResNet18": "resnet18", "ResNet18Spec": "resnet18"}


def __getattr__(name: str) -> object:
    """The networks, imported (with torch) when first asked for."""
    if name in _NETWORKS:
        return getattr(importlib.import_module(f".{_NETWORKS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCHITECTURES", "CNN3", "Architecture", "CNN3Spec", "Device", "ResNet18",
           "ResNet18Spec", "build_model", "pick_device"]
