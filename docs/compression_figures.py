"""Render what JPEG 2000 erases, and what each model input still shows: one malignant lesion at
each CR of the experiments, at the detector's pitch and at the model inputs' pitches.

    .venv/bin/python docs/compression_figures.py docs/experiments/lesion_by_cr.png

The view is the phantom's Hologic LCC with a spiculated mass and pleomorphic calcifications
(`PHYSICAL` lesions, seed 2021); every CR comes from the product's encoder (`encode_ladder`,
the transcoder's) and decoder. Rows: the stored pixels (0.07 mm), the paper's 30 % resize
(0.23 mm, `resize_and_crop`), and the same shrunk further as `--input-size 512` and `256` shrink
the pair (about 0.46 and 0.92 mm). Each panel is the same 25 mm square around the lesion, on one
grey window (the CR 1 square's 1st to 99.8th percentile), so a change between columns is the
codec's; red: the lesion's ground-truth outline, in the first column only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from dicomcr.codec.j2k import cr_short, decode, encode_ladder
from dicomcr.data.preprocess import FULL_SIZE_VIEWS, Preprocessing, resize_and_crop
from dicomcr.phantom import generate_study

SEED, INDEX = 2021, 20
KINDS = ("spiculated_mass", "pleomorphic_calcifications")
CRS = [1.0, 20.0, 1000.0, 5000.0, 10000.0, 11000.0]
SQUARE_MM = 25.0


def _lesion_view():
    """The first malignant study from INDEX whose lesion is in the left breast: its LCC."""
    index = INDEX
    while True:
        study = generate_study(SEED, index, "malignant", "hologic", "full", lesion_kinds=KINDS)
        if study.breasts["L"].lesions:
            return study, study.views[0]
        index += 1


def render(out: Path) -> Path:
    study, view = _lesion_view()
    bits = study.detector.bits_stored
    ladder = encode_ladder(view.pixels, bits, CRS[1:])
    images = {1.0: view.pixels.astype(np.float64)}
    images |= {e.target_cr: decode(e.codestream).astype(np.float64) for e in ladder}
    achieved = {e.target_cr: e.achieved_cr for e in ladder}
    canvas_columns = Preprocessing().for_views(FULL_SIZE_VIEWS[:1]).model_input[1]
    rows = [("stored, 0.07 mm", None), ("paper's 30 %, 0.23 mm", 0.30)]
    for n in (512, 256):
        scale = 0.30 * n / canvas_columns
        rows.append((f"input {n} x {n}, {study.detector.pixel_spacing_mm / scale:.2f} mm", scale))
    figure, axes = plt.subplots(len(rows), len(CRS), figsize=(2.1 * len(CRS), 2.3 * len(rows)))
    for r, (label, scale) in enumerate(rows):
        def shown(image: np.ndarray, scale: float | None = scale) -> np.ndarray:
            if scale is None:
                return image
            return resize_and_crop(image, view.laterality, view.view, Preprocessing(scale=scale))

        mask = shown(view.lesion_mask.astype(np.float64)) > 0.5
        ys, xs = np.nonzero(mask)
        pitch = study.detector.pixel_spacing_mm / (scale or 1.0)
        half = int(SQUARE_MM / 2 / pitch)
        cy, cx = int(ys.mean()), int(xs.mean())
        square = (slice(max(cy - half, 0), cy + half), slice(max(cx - half, 0), cx + half))
        reference = shown(images[1.0])[square]
        low, high = np.percentile(reference, [1, 99.8])
        for c, cr in enumerate(CRS):
            ax = axes[r, c]
            panel = np.clip((shown(images[cr])[square] - low) / (high - low), 0, 1)
            if study.photometric == "MONOCHROME1":
                panel = 1 - panel
            ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if c == 0:
                ax.contour(mask[square], levels=[0.5], colors="red", linewidths=0.6)
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                title = "CR 1 (original)" if cr == 1.0 else \
                    f"CR {cr_short(cr)} (achieved {achieved[cr]:,.0f})"
                ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle("A spiculated mass with calcifications (phantom, PHYSICAL lesions), "
                    f"{SQUARE_MM:.0f} mm square, at each CR and model-input pitch", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=130)
    return out


if __name__ == "__main__":
    print(render(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/experiments/lesion_by_cr.png")))
