"""CNN3, the paper's classifier: three convolution blocks and three fully connected layers.

Jo et al.: each convolution has a 6x6 filter, stride 2 and padding 2, followed by BatchNorm, ReLU
and max pooling; the fully connected layers carry BatchNorm and ReLU; one output (malignant), BCE.
The paper gives no widths: `CNN3Spec` holds our choices. (It also mentions max pooling after the
fully connected layers, which has no meaning on a vector; we leave it out.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNN3Spec:
    """The architecture's free parameters (reproduction choices)."""

    channels: tuple[int, int, int] = (16, 32, 64)
    hidden: tuple[int, int] = (128, 32)
    input_size: tuple[int, int] = (256, 256)
    dropout: float = 0.3

    def as_dict(self) -> dict:
        return asdict(self)


def _conv(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel_size=6, stride=2, padding=2),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True), nn.MaxPool2d(2))


class CNN3(nn.Module):
    """Input: (batch, 1, rows, columns) in [0, 1]; output: one logit per input."""

    def __init__(self, spec: CNN3Spec | None = None) -> None:
        super().__init__()
        self.spec = spec or CNN3Spec()
        c1, c2, c3 = self.spec.channels
        self.features = nn.Sequential(_conv(1, c1), _conv(c1, c2), _conv(c2, c3))
        side = list(self.spec.input_size)
        for _ in range(3):  # each block: 6x6 convolution, stride 2, padding 2; then pooling by 2
            side = [((n - 2) // 2 + 1) // 2 for n in side]
        if min(side) < 1:
            raise ValueError(f"CNN3 needs an input of at least 64 x 64, got {self.spec.input_size}")
        flat = c3 * side[0] * side[1]
        h1, h2 = self.spec.hidden
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, h1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True),
            nn.Dropout(self.spec.dropout),
            nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.ReLU(inplace=True),
            nn.Linear(h2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.spec.input_size:
            raise ValueError(f"expected (batch, 1, {self.spec.input_size[0]}, "
                             f"{self.spec.input_size[1]}), got {tuple(x.shape)}")
        return self.classifier(self.features(x)).squeeze(1)
