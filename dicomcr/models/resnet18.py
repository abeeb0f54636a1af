"""ResNet18 from torchvision for one-channel mammography inputs, ImageNet weights only from disk.

The first convolution takes one channel: with ImageNet weights its RGB kernels are summed (the
usual way to keep what they learnt on grey inputs). Nothing is downloaded: the weights are used
when they are in the local torch cache or given by path, and loaded with `weights_only=True`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1
IMAGENET_GREY = (0.449, 0.226)  # mean and sd of ImageNet's RGB statistics, for one channel


def imagenet_weights_path() -> Path:
    """Where torchvision would have cached the ImageNet weights of ResNet18."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


@dataclass(frozen=True)
class ResNet18Spec:
    """Input size, and whether training started from ImageNet weights (recorded, not re-read)."""

    input_size: tuple[int, int] = (256, 256)
    imagenet: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class ResNet18(nn.Module):
    """Input: (batch, 1, rows, columns) in [0, 1]; output: one logit per input."""

    def __init__(self, spec: ResNet18Spec | None = None) -> None:
        super().__init__()
        self.spec = spec or ResNet18Spec()
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Linear(net.fc.in_features, 1)
        self.net = net

    def load_imagenet(self, path: Path) -> None:
        """Start from ImageNet weights (a torchvision state dict); the classifier stays new."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several kinds on damaged or pickled files
            raise ValueError(f"{path}: not a readable ResNet18 weights file ({exc})") from exc
        if not isinstance(state, dict) or "conv1.weight" not in state:
            raise ValueError(f"{path}: not a torchvision ResNet18 state dict")
        state = dict(state)
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
        state.pop("fc.weight", None)
        state.pop("fc.bias", None)
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
            raise ValueError(f"{path}: does not fit ResNet18 (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.spec.input_size:
            raise ValueError(f"expected (batch, 1, {self.spec.input_size[0]}, "
                             f"{self.spec.input_size[1]}), got {tuple(x.shape)}")
        mean, sd = IMAGENET_GREY
        return self.net((x - mean) / sd).squeeze(1)
