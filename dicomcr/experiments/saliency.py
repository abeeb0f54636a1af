"""How well Grad-CAM points at the lesion, beyond the paper's Fig. 3: small functions over arrays.

For malignant breasts with a lesion mask, in the model's input space (the mask goes through the
same crop, mirror and resize as the image): the pointing game (is the map's maximum on the
lesion, within a tolerance of a few input pixels) and the share of the map's energy inside the
lesion. Hit rates carry a Wilson 95 % interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage, stats

from ..data.dataset import Breast
from ..data.preprocess import Preprocessing, breast_input, resize_and_crop
from ..explain.gradcam import grad_cam


def input_mask(breast: Breast, p: Preprocessing) -> np.ndarray | None:
    """The breast's lesion mask on the model's input grid (True where any lesion is), or None
    when the dataset has no mask for one of its views."""
    if breast.cc_mask is None or breast.mlo_mask is None:
        return None
    crops = []
    for path, view in ((breast.cc_mask, "CC"), (breast.mlo_mask, "MLO")):
        mask = (np.asarray(Image.open(path)) > 0).astype(np.float32)
        crops.append(resize_and_crop(mask, breast.laterality, view, p))
    return breast_input(crops[0], crops[1], p) > 0


def pointing_game(cam: np.ndarray, mask: np.ndarray, tolerance: int = 2) -> bool:
    """Whether the map's maximum falls on the lesion (dilated by `tolerance` input pixels)."""
    if cam.shape != mask.shape:
        raise ValueError(f"map and mask differ in shape: {cam.shape}, {mask.shape}")
    square = np.ones((3, 3), dtype=bool)  # the tolerance is a distance in any direction
    grown = ndimage.binary_dilation(mask, square, iterations=tolerance) if tolerance else mask
    return bool(grown[np.unravel_index(int(np.argmax(cam)), cam.shape)])


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's total (non-negative) energy that lies on the lesion."""
    if cam.shape != mask.shape:
        raise ValueError(f"map and mask differ in shape: {cam.shape}, {mask.shape}")
    total = float(np.clip(cam, 0, None).sum())
    return float(np.clip(cam, 0, None)[mask].sum() / total) if total > 0 else 0.0


def wilson(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    phat = hits / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


@dataclass(frozen=True)
class SaliencyRow:
    """Grad-CAM against the lesion masks for one model at one CR, over all folds."""

    model: str
    test_cr: float
    n: int
    pointing_hits: int
    pointing_rate: float
    pointing_low: float
    pointing_high: float
    energy_mean: float
    energy_sd: float


def score_maps(network: torch.nn.Module, inputs: np.ndarray, masks: list[np.ndarray]
               ) -> tuple[list[bool], list[float]]:
    """(pointing-game hits, energy shares) of the network's Grad-CAM on each input."""
    network.eval()
    hits, shares = [], []
    for x, mask in zip(inputs, masks, strict=True):
        cam = grad_cam(network, torch.from_numpy(np.asarray(x, dtype=np.float32))[None, None])
        hits.append(pointing_game(cam, mask))
        shares.append(energy_inside(cam, mask))
    return hits, shares


def saliency_row(model: str, cr: float, hits: list[bool], shares: list[float]) -> SaliencyRow:
    n, k = len(hits), int(sum(hits))
    low, high = wilson(k, n)
    return SaliencyRow(model, cr, n, k, k / n if n else float("nan"), low, high,
                       float(np.mean(shares)) if shares else float("nan"),
                       float(np.std(shares, ddof=1)) if len(shares) > 1 else 0.0)


def cv_saliency(plans: list, results: list, keys: list[str], inputs: dict[float, np.ndarray],
                masks: dict[int, np.ndarray], load_fold_model) -> list[SaliencyRow]:
    """For each single-CR model: Grad-CAM of each fold's network on its own malignant test
    breasts that have a mask, at the model's CR. `load_fold_model(model, fold)` gives a network."""
    index = {key: i for i, key in enumerate(keys)}
    rows = []
    for plan in (p for p in plans if len(p.train_crs) == 1):
        cr = plan.train_crs[0]
        hits, shares = [], []
        for result in (r for r in results if r.model == plan.name):
            chosen = [index[k] for k in result.keys if index[k] in masks]
            if not chosen:
                continue
            h, s = score_maps(load_fold_model(plan.name, result.fold), inputs[cr][chosen],
                              [masks[i] for i in chosen])
            hits += h
            shares += s
        rows.append(saliency_row(plan.name, cr, hits, shares))
    return rows
