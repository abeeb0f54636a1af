"""Grad-CAM of the malignancy logit: captum's `LayerGradCam` on the last convolution block."""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn


def target_layer(model: nn.Module) -> nn.Module:
    """The last convolution block's activation: CNN3's third ReLU, ResNet18's layer4."""
    if hasattr(model, "features"):  # CNN3: conv, BatchNorm, ReLU, pool; before the pooling
        return model.features[-1][2]
    return model.net.layer4


class _Logit(nn.Module):
    """(batch,) -> (batch, 1), the shape captum attributes against."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, None]


def grad_cam(network: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Grad-CAM of the malignancy logit for one input (1, 1, rows, columns), at the input's
    size, scaled to 0..1."""
    for module in network.modules():  # captum's hooks need out-of-place activations
        if isinstance(module, nn.ReLU):
            module.inplace = False
    cam = LayerGradCam(_Logit(network), target_layer(network)).attribute(x, target=0)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear")
    cam = torch.relu(cam)[0, 0].detach().float().cpu().numpy()
    top = float(cam.max())
    return cam / top if top > 0 else cam
