"""Render the README's phantom figures: one LCC and one LMLO of each finding, with zooms.

    .venv/bin/python docs/phantom_figures.py docs/phantom

Each image is written as DICOM first and read back through pydicom's VOI LUT, so the figure shows
what a viewer shows from the files. The lesion's ground-truth outline is drawn in red; the zoom is a
full-resolution 25 mm square around the lesion.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_voi_lut
from scipy import ndimage

from dicomcr.phantom import generate_study

SEED = 2021
CASES = {  # finding -> (first study index tried, lesion kinds forced on the lesion's breast)
    "normal": (0, None),
    "benign": (10, ("circumscribed_mass",)),
    "malignant": (20, ("spiculated_mass", "pleomorphic_calcifications")),
}


def _display(path: Path) -> np.ndarray:
    """8-bit display image of a DICOM file: VOI LUT applied, MONOCHROME1 inverted."""
    ds = pydicom.dcmread(path)
    shown = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
    lo, hi = shown.min(), shown.max()
    shown = (shown - lo) / max(hi - lo, 1e-9)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 1.0 - shown
    return (shown * 255).astype(np.uint8)


def _outline(image: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    rgb = np.stack([image] * 3, axis=-1)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=width)
    rgb[edge] = (255, 40, 40)
    return rgb


def render(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for finding, (index, kinds) in CASES.items():
            while True:  # the first study of this finding whose lesion is in the left breast
                study = generate_study(SEED, index, finding, "hologic", "full", lesion_kinds=kinds)
                if finding == "normal" or study.breasts["L"].lesions:
                    break
                index += 1
            for number, view in enumerate(study.views[:2], start=1):  # LCC, LMLO
                dcm = Path(tmp) / f"{view.name}.dcm"
                study.dataset(view, number).save_as(dcm, enforce_file_format=True)
                image = _display(dcm)
                full = _outline(image, view.lesion_mask, 12)
                small = Image.fromarray(full).resize((full.shape[1] // 5, full.shape[0] // 5),
                                                     Image.LANCZOS)
                path = out / f"{finding}_{view.name}.png"
                small.save(path)
                written.append(path)
                if view.lesion_mask.any():
                    rows, cols = np.nonzero(view.lesion_mask)
                    half = int(12.5 / study.detector.pixel_spacing_mm)
                    cy, cx = int(rows.mean()), int(cols.mean())
                    crop = (slice(max(cy - half, 0), cy + half), slice(max(cx - half, 0), cx + half))
                    zoom = np.concatenate([np.stack([image[crop]] * 3, -1),
                                           _outline(image[crop], view.lesion_mask[crop], 2)], axis=1)
                    path = out / f"{finding}_{view.name}_zoom.png"
                    Image.fromarray(zoom).save(path)
                    written.append(path)
    return written


if __name__ == "__main__":
    for path in render(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/phantom")):
        print(path)
