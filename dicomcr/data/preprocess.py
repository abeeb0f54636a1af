"""The paper's preprocessing, as pure functions: normalise, resize to 30 %, crop, pair CC with MLO.

Jo et al.: each view is compressed at the CR, decoded, resized to 30 % of its size and cropped: on
the x-axis the half away from the breast (the right half of left views, the left half of right
views), on the y-axis the top fifth of MLO and the bottom fifth of CC views; the CC and MLO of a
breast are concatenated into one input. Reproduction choices (the paper is silent) are in
`Preprocessing`: right breasts are mirrored so that every input has the chest wall on the left,
CC comes first, and the pair keeps the 30 % pitch: crops are padded (zeros, at the right and the
bottom of each view, away from the chest wall) to a canvas derived from the data, never shrunk,
unless a smaller model input is asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

# (rows, columns) of full-size views of the paper's two vendors (and the phantom's detectors):
# Hologic Selenia Dimensions 4096 x 3328 at 0.07 mm, GE Senographe DS 2294 x 1914 at 0.1 mm.
FULL_SIZE_VIEWS = ((4096, 3328), (2294, 1914))


@dataclass(frozen=True)
class Preprocessing:
    """Every parameter of the pipeline; part of a model file's identity and of the cache key.

    `canvas` is the padded pair at the 30 % pitch: CC in its left half, MLO in its right half,
    each crop at the top left of its half (chest wall on the left), zeros elsewhere. It is derived
    from the data (`with_canvas`: the largest crops of the cohort), so no image is shrunk beyond
    the paper's 30 %. `input_size` is what the model takes: None keeps the canvas (the 30 %
    pitch); another size resizes the canvas to it (a smaller one trades resolution for CPU time,
    a larger one enlarges it; `input_text` says which)."""

    scale: float = 0.30  # the paper's resize
    crop_fraction_y: float = 0.2  # a fifth of the height
    mirror_right: bool = True  # our choice: chest wall on the left for every input
    canvas: tuple[int, int] | None = None  # (rows, columns) of the padded pair; None: not derived
    input_size: tuple[int, int] | None = None  # (rows, columns) of the model input; None: canvas

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        """Back from a model file's JSON metadata (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")
        if not 0 <= self.crop_fraction_y < 1:
            raise ValueError(f"crop_fraction_y must be in [0, 1), got {self.crop_fraction_y}")
        if self.input_size is not None and min(self.input_size) < 16:
            raise ValueError(f"input_size must be at least 16 x 16, got {self.input_size}")
        if self.canvas is not None and (self.canvas[1] % 2 or min(self.canvas) < 2):
            raise ValueError(f"canvas must have an even number of columns, got {self.canvas}")

    @property
    def model_input(self) -> tuple[int, int]:
        """(rows, columns) the model takes: `input_size`, else the canvas."""
        return self.input_size or self._canvas()

    @property
    def keeps_pitch(self) -> bool:
        """Whether the model sees the pair at the `scale` pitch (no further shrink)."""
        return self.model_input == self._canvas()

    def input_text(self) -> str:
        """The model input in words: its size and what becomes of the padded CC + MLO pair,
        kept at the pitch, or resized: shrunk, enlarged, or each in the dimension it is."""
        rows, columns = self.model_input
        if self.keeps_pitch:
            return f"{rows} x {columns} (the pair at {self.scale:g} of the image, padded)"
        canvas = self._canvas()
        changed = {name: "shrunk" if want < have else "enlarged"
                   for name, want, have in zip(("height", "width"), self.model_input, canvas,
                                               strict=True) if want != have}
        both = len(changed) == 2 and len(set(changed.values())) == 1  # shrunk (or enlarged) both ways
        how = changed["height"] if both else ", ".join(f"{w} in {n}" for n, w in changed.items())
        return f"{rows} x {columns} (the {canvas[0]} x {canvas[1]} pair at {self.scale:g}, {how})"

    def _canvas(self) -> tuple[int, int]:
        if self.canvas is None:
            raise ValueError("the canvas is derived from the data first (Preprocessing.with_canvas)")
        return self.canvas

    def with_canvas(self, crops: list[tuple[int, int]]) -> Preprocessing:
        """This preprocessing with the canvas that holds every crop of `crops` (view shapes after
        `resize_and_crop`): rows the tallest crop, each half the widest."""
        if not crops:
            raise ValueError("no crops to derive the canvas from")
        rows = max(r for r, _ in crops)
        half = max(c for _, c in crops)
        return replace(self, canvas=(rows, 2 * half))

    def for_views(self, shapes: tuple[tuple[int, int], ...] | list[tuple[int, int]]
                  ) -> Preprocessing:
        """This preprocessing with the canvas that holds the crops of views of these full
        sizes (e.g. `FULL_SIZE_VIEWS`: a Hologic pair is 983 x 998 at 30 %)."""
        return self.with_canvas([crop_shape(s, side, view, self) for s in shapes
                                 for side in "LR" for view in ("CC", "MLO")])

    def view_key(self) -> dict:
        """The parameters a view's crop depends on (the cache key of crops)."""
        return {"scale": self.scale, "crop_fraction_y": self.crop_fraction_y,
                "mirror_right": self.mirror_right}

    def as_dict(self) -> dict:
        return asdict(self)


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


def _interpolate(image: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """`image` resized to `size` with torch's `mode`, on the CPU (torch imported here: the node
    and its transcoding workers import this module and must start in a second)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    corners = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(tensor, size=size, mode=mode, **corners)[0, 0].numpy()


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-averaging resize (anti-aliased when shrinking)."""
    return _interpolate(image, size, "area")


def resize_and_crop(image: np.ndarray, laterality: str, view: str, p: Preprocessing) -> np.ndarray:
    """One normalised view: resized to `p.scale`, cropped as the paper, right views mirrored."""
    if laterality not in ("L", "R") or view not in ("CC", "MLO"):
        raise ValueError(f"laterality must be L or R and view CC or MLO, got {laterality}{view}")
    rows, cols = image.shape
    small = _resize(image, (max(1, round(rows * p.scale)), max(1, round(cols * p.scale))))
    top, bottom, left, right = _small_box(image.shape, laterality, view, p)
    kept = small[top:bottom, left:right]
    if laterality == "R" and p.mirror_right:
        kept = kept[:, ::-1]
    return np.ascontiguousarray(kept)


class GeometryError(ValueError):
    """A view whose crop does not fit the model's canvas (e.g. a larger detector than trained on)."""


def crop_shape(shape: tuple[int, int], laterality: str, view: str, p: Preprocessing
               ) -> tuple[int, int]:
    """(rows, columns) of what `resize_and_crop` keeps of a view of `shape`, at `p.scale`."""
    top, bottom, left, right = _small_box(shape, laterality, view, p)
    return bottom - top, right - left


def breast_input(cc: np.ndarray, mlo: np.ndarray, p: Preprocessing) -> np.ndarray:
    """CC and MLO crops on the canvas (each at the top left of its half, zeros around), shrunk
    to `p.input_size` only when one was asked for."""
    rows, columns = p._canvas()
    half = columns // 2
    pair = np.zeros((rows, columns), dtype=np.float32)
    for name, crop, start in (("CC", cc, 0), ("MLO", mlo, half)):
        if crop.shape[0] > rows or crop.shape[1] > half:
            raise GeometryError(
                f"the {name} crop is {crop.shape[0]} x {crop.shape[1]} pixels at {p.scale:g} of "
                f"the image, larger than the model's {rows} x {half} per view: the model was "
                f"trained on smaller images (another detector); train it on data that includes "
                f"images of this size")
        pair[:crop.shape[0], start:start + crop.shape[1]] = crop
    return pair if p.keeps_pitch else _resize(pair, p.model_input)


def _small_box(shape: tuple[int, int], laterality: str, view: str, p: Preprocessing
               ) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the crop in the resized view's pixels."""
    rows, cols = shape
    small_rows, small_cols = max(1, round(rows * p.scale)), max(1, round(cols * p.scale))
    half, cut = small_cols // 2, round(small_rows * p.crop_fraction_y)
    left, right = (0, half) if laterality == "L" else (small_cols - half, small_cols)
    top, bottom = (cut, small_rows) if view == "MLO" else (0, small_rows - cut)
    return top, bottom, left, right


def crop_box(shape: tuple[int, int], laterality: str, view: str, p: Preprocessing
             ) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) in the full view's pixels of what `resize_and_crop` keeps."""
    rows, cols = shape
    top, bottom, left, right = _small_box(shape, laterality, view, p)
    sy = rows / max(1, round(rows * p.scale))
    sx = cols / max(1, round(cols * p.scale))
    return round(top * sy), round(bottom * sy), round(left * sx), round(right * sx)


def to_view(cam: np.ndarray, shape: tuple[int, int], laterality: str, view: str,
            p: Preprocessing, half: str | None = None) -> np.ndarray:
    """A map over the whole model input, put back on one full view (zeros elsewhere): the
    inverse of shrink, pad, crop, mirror and resize, so a heat map lands on the pixels it
    explains. `half`: the half of the input the view sits in (default: its own, CC left)."""
    if tuple(cam.shape) != p.model_input:
        raise ValueError(f"the map is {cam.shape}, the model input {p.model_input}")
    rows, columns = p._canvas()
    canvas = cam if p.keeps_pitch else _interpolate(cam, (rows, columns), "bilinear")
    start = 0 if (half or view) == "CC" else columns // 2
    crop_rows, crop_cols = crop_shape(shape, laterality, view, p)
    part = canvas[:crop_rows, start:start + crop_cols]
    if laterality == "R" and p.mirror_right:
        part = part[:, ::-1]
    top, bottom, left, right = crop_box(shape, laterality, view, p)
    out = np.zeros(shape, dtype=np.float32)
    out[top:bottom, left:right] = _interpolate(part, (bottom - top, right - left), "bilinear")
    return out
