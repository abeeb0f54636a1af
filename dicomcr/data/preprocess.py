"""The paper's preprocessing, as pure functions: normalise, resize to 30 %, crop, pair CC with MLO.

Jo et al.: each view is compressed at the CR, decoded, resized to 30 % of its size and cropped: on
the x-axis the half away from the breast (the right half of left views, the left half of right
views), on the y-axis the top fifth of MLO and the bottom fifth of CC views; the CC and MLO of a
breast are concatenated into one input. Reproduction choices (the paper is silent) are in
`Preprocessing`: right breasts are mirrored so that every input has the chest wall on the left,
CC comes first, and the pair is resized to a fixed input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocessing:
    """Every parameter of the pipeline; part of a model file's identity and of the cache key."""

    scale: float = 0.30  # the paper's resize
    crop_fraction_y: float = 0.2  # a fifth of the height
    input_size: tuple[int, int] = (256, 256)  # (rows, columns) of the model input: our choice
    mirror_right: bool = True  # our choice: chest wall on the left for every input

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        """Back from a model file's JSON metadata (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")
        if not 0 <= self.crop_fraction_y < 1:
            raise ValueError(f"crop_fraction_y must be in [0, 1), got {self.crop_fraction_y}")
        if min(self.input_size) < 16:
            raise ValueError(f"input_size must be at least 16 x 16, got {self.input_size}")


def normalise(pixels: np.ndarray, bits_stored: int, photometric: str,
              window: tuple[float, float] | None = None) -> np.ndarray:
    """Stored values to float32 in [0, 1], dense tissue bright (MONOCHROME1 inverted).

    With a VOI window (centre, width) the window's range maps to [0, 1]; else BitsStored does."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    x = pixels.astype(np.float32)
    if window is not None:
        centre, width = window
        if not width > 0:
            raise ValueError(f"window width must be > 0, got {width}")
        lo = centre - width / 2
        if photometric == "MONOCHROME1":  # the window is in stored values; invert after
            x = np.clip((x - lo) / width, 0.0, 1.0)
            return 1.0 - x
        return np.clip((x - lo) / width, 0.0, 1.0)
    x /= float((1 << bits_stored) - 1)
    return 1.0 - x if photometric == "MONOCHROME1" else x


def normalise_image(pixels: np.ndarray, dataset) -> np.ndarray:
    """`normalise` with what the image's own header says: BitsStored, PhotometricInterpretation
    and the first VOI window (WindowCenter/WindowWidth) when it has one."""
    window = None
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        window = (float(np.ravel(dataset.WindowCenter)[0]),
                  float(np.ravel(dataset.WindowWidth)[0]))
    return normalise(pixels, int(dataset.BitsStored), str(dataset.PhotometricInterpretation),
                     window)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-averaging resize (anti-aliased when shrinking), on the CPU with torch."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="area")[0, 0].numpy()


def resize_and_crop(image: np.ndarray, laterality: str, view: str, p: Preprocessing) -> np.ndarray:
    """One normalised view: resized to `p.scale`, cropped as the paper, right views mirrored."""
    if laterality not in ("L", "R") or view not in ("CC", "MLO"):
        raise ValueError(f"laterality must be L or R and view CC or MLO, got {laterality}{view}")
    rows, cols = image.shape
    small = _resize(image, (max(1, round(rows * p.scale)), max(1, round(cols * p.scale))))
    rows, cols = small.shape
    half = cols // 2
    kept = small[:, :half] if laterality == "L" else small[:, cols - half:]
    cut = round(rows * p.crop_fraction_y)
    kept = kept[cut:] if view == "MLO" else kept[: rows - cut]
    if laterality == "R" and p.mirror_right:
        kept = kept[:, ::-1]
    return np.ascontiguousarray(kept)


def breast_input(cc: np.ndarray, mlo: np.ndarray, p: Preprocessing) -> np.ndarray:
    """CC and MLO crops side by side (heights matched), resized to the model's input size."""
    rows = max(cc.shape[0], mlo.shape[0])

    def fit(view: np.ndarray) -> np.ndarray:
        width = max(1, round(view.shape[1] * rows / view.shape[0]))
        return _resize(view, (rows, width))

    pair = np.concatenate([fit(cc), fit(mlo)], axis=1)
    return _resize(pair, p.input_size)


def crop_box(shape: tuple[int, int], laterality: str, view: str, p: Preprocessing
             ) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) in the full view's pixels of what `resize_and_crop` keeps."""
    rows, cols = shape
    small_rows, small_cols = max(1, round(rows * p.scale)), max(1, round(cols * p.scale))
    half, cut = small_cols // 2, round(small_rows * p.crop_fraction_y)
    left, right = (0, half) if laterality == "L" else (small_cols - half, small_cols)
    top, bottom = (cut, small_rows) if view == "MLO" else (0, small_rows - cut)
    sy, sx = rows / small_rows, cols / small_cols
    return round(top * sy), round(bottom * sy), round(left * sx), round(right * sx)


def split_columns(cc: tuple[int, int], mlo: tuple[int, int], p: Preprocessing) -> int:
    """The input column where the MLO starts, for crops of shapes `cc` and `mlo` (as
    `breast_input` lays them side by side)."""
    rows = max(cc[0], mlo[0])
    widths = [max(1, round(shape[1] * rows / shape[0])) for shape in (cc, mlo)]
    return round(p.input_size[1] * widths[0] / sum(widths))


def to_view(part: np.ndarray, shape: tuple[int, int], laterality: str, view: str,
            p: Preprocessing) -> np.ndarray:
    """A map over one view's part of the input, put back on the full view (zeros elsewhere):
    the inverse of crop, mirror and resize, so a heat map lands on the pixels it explains."""
    top, bottom, left, right = crop_box(shape, laterality, view, p)
    if laterality == "R" and p.mirror_right:
        part = part[:, ::-1]
    tensor = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))[None, None]
    placed = F.interpolate(tensor, size=(bottom - top, right - left), mode="bilinear",
                           align_corners=False)[0, 0].numpy()
    out = np.zeros(shape, dtype=np.float32)
    out[top:bottom, left:right] = placed
    return out
