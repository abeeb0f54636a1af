"""Fig. 3 of the paper: each view with its ground truth and every model's Grad-CAM over it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def saliency_figure(views: list[tuple[str, np.ndarray, np.ndarray | None]],
                    maps: list[tuple[str, dict[str, np.ndarray]]], path: Path,
                    title: str = "") -> None:
    """Fig. 3: per view (rows) the image, its ground-truth mask when known, and each model's
    Grad-CAM at each CR (columns). `views`: (name, image 0..1, mask or None); `maps`: (column
    title, {view name: heat 0..1})."""
    with_mask = any(mask is not None for _, _, mask in views)
    columns = 1 + with_mask + len(maps)
    fig, axes = plt.subplots(len(views), columns, figsize=(2.4 * columns, 3.0 * len(views)),
                             squeeze=False)
    for row, (name, image, mask) in enumerate(views):
        step = max(1, max(image.shape) // 600)
        shown = image[::step, ::step]
        axes[row, 0].imshow(shown, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(name)
        col = 1
        if with_mask:
            axes[row, 1].imshow(shown, cmap="gray", vmin=0, vmax=1)
            if mask is not None:
                axes[row, 1].contour(mask[::step, ::step], levels=[0.5], colors="red",
                                     linewidths=0.8)
            col = 2
        for title_text, heats in maps:
            axes[row, col].imshow(shown, cmap="gray", vmin=0, vmax=1)
            heat = np.ma.masked_less(heats[name][::step, ::step], 0.05)  # cold: no colour
            axes[row, col].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if row == 0:
                axes[row, col].set_title(title_text, fontsize=8)
            col += 1
    axes[0, 0].set_title("image", fontsize=8)
    if with_mask:
        axes[0, 1].set_title("ground truth", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "Grad-CAM of each model at each CR (not for diagnostic use)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
