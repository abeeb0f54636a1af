"""Preprocessed inputs at each CR, cached on disk by SOP Instance UID, CR and preprocessing.

Two levels, both float16 (11 significant bits: within one step of a 12-bit image, half the bytes
of float32): each view's crop at each CR (all CRs of a view from one encode, the transcoder's
ladder; missing views computed by a pool of processes, one view per task), and per CR the model
inputs of a list of breasts as one array file, opened memory-mapped, so that a cohort at the
paper's pitch (600 breasts x 1000 x 1000 is 1.2 GB per CR) is read a batch at a time, never held
whole. A rerun recomputes nothing that is cached.

Whatever computes crops from an image's pixels first claims its UID (`claim_image`: a digest of
the pixels), so two images under one UID are refused, never confused. A streamed phantom cohort
(`dicomcr.phantom.stream`) fills the same cache from pixels generated in memory, by the same
`store_crops`: its breasts carry their views' headers (`ViewHeader`) instead of files, and share
the entries of the same cohort stored on disk.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..codec.j2k import (
    CODEC_REVISION,
    MIN_CODESTREAM_BYTES,
    decode,
    encode_ladder,
    highest_ratio,
)
from ..dicom.source import SourceImage, read_source
from ..outputs import write_text_atomically
from .dataset import Breast, ViewHeader
from .preprocess import Preprocessing, breast_input, normalise_image, resize_and_crop

STORED = np.float16  # how crops and inputs are kept on disk


def _hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:24]


def _key(sop_uid: str, cr: float, p: Preprocessing) -> str:
    """The cached crop depends on the view, the CR, the encoder that made it lossy and the view's
    parameters (not the canvas)."""
    codec = CODEC_REVISION if cr != 1.0 else None  # CR 1: the source's own pixels
    return _hash({"sop": sop_uid, "cr": cr, "p": p.view_key(), "dtype": np.dtype(STORED).name,
                  **({"codec": codec} if codec is not None else {})})


def crop_files(sop_uid: str, crs: list[float], p: Preprocessing, cache: Path) -> dict[float, Path]:
    """{CR: where the cache keeps the crop of the view `sop_uid` at that CR}."""
    return {cr: cache / f"{_key(sop_uid, cr, p)}.npy" for cr in crs}


def _files(path: Path, header: ViewHeader | None, crs: list[float], p: Preprocessing,
           cache: Path) -> dict[float, Path]:
    """`crop_files` of a view, its UID from `header` when given, else from the file's header."""
    uid = header.sop_instance_uid if header is not None else \
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return crop_files(uid, crs, p, cache)


def claim_image(sop_uid: str, pixels: np.ndarray, cache: Path) -> None:
    """Record in `cache` which pixels the SOP Instance UID `sop_uid` names there (a digest), or
    refuse other pixels under a UID already claimed: a cache keyed by UID must never give one
    image's crops to another. Checked whenever a view's crops are computed (a view whose every
    crop is cached is not read again, so not checked); phantom UIDs name everything that shapes
    the pixels, so only a dataset that reuses UIDs for other images meets it."""
    digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    record = cache / f"image-{_hash({'sop': sop_uid})}.sha256"
    if record.exists():
        if record.read_text().strip() != digest.hexdigest():
            raise ValueError(f"the cache {cache} holds the crops of another image with SOP Instance "
                             f"UID {sop_uid}: datasets that give one UID to different pixels (phantom "
                             f"cohorts of one seed with other numbers of studies or mixes do) cannot "
                             f"share a cache; give this one its own --cache")
        return
    write_text_atomically(record, digest.hexdigest() + "\n")


def store_crops(source: SourceImage, laterality: str, view: str, files: dict[float, Path],
                p: Preprocessing, cache: Path) -> None:
    """Compute and store the preprocessed crop of one view (its pixels and header in `source`) at
    every CR (`files`: where each goes) that the cache lacks; the view's UID claimed first."""
    claim_image(str(source.dataset.SOPInstanceUID), source.pixels, cache)
    missing = [cr for cr, f in files.items() if not f.exists()]
    decoded = {1.0: source.pixels} if 1.0 in missing else {}
    lossy = [cr for cr in missing if cr != 1.0]
    if lossy:
        for item in encode_ladder(source.pixels, source.bits_stored, lossy, source.bits_allocated):
            decoded[item.target_cr] = decode(item.codestream)
    for cr, pixels in decoded.items():
        image = normalise_image(pixels, source.dataset)
        partial = files[cr].with_name(f".{files[cr].stem}.{os.getpid()}.partial.npy")
        np.save(partial, resize_and_crop(image, laterality, view, p).astype(STORED))
        partial.replace(files[cr])  # a killed run leaves no half-written input behind


def _ensure_view(path: Path, laterality: str, view: str, files: dict[float, Path],
                 p: Preprocessing, cache: Path) -> None:
    """`store_crops` of the view in the file `path`, read only when the cache lacks a crop."""
    if not all(f.exists() for f in files.values()):
        store_crops(read_source(path), laterality, view, files, p, cache)


def worker_init() -> None:
    """A preprocessing process: one core each (`spawn` context), the parallelism is across views."""
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)  # one view per process: no oversubscription of the cores


def view_crops(breasts: list[Breast], crs: list[float], p: Preprocessing, cache: Path,
               workers: int = 1, progress: Callable[[int, int], None] | None = None
               ) -> dict[Path, dict[float, Path]]:
    """{view file: {CR: its cached crop}}, computing the crops missing from the cache.

    `progress(done, total)` is called as views missing from the cache are computed."""
    views = [(b.cc, b.laterality, "CC", b.headers[0] if b.headers else None) for b in breasts] + \
            [(b.mlo, b.laterality, "MLO", b.headers[1] if b.headers else None) for b in breasts]
    files = {v[0]: _files(v[0], v[3], crs, p, cache) for v in views}  # one header read per view
    todo = [v[:3] for v in views if not all(f.exists() for f in files[v[0]].values())]
    streamed = next((v for v in views if v[3] is not None and v[:3] in todo), None)
    if streamed is not None:
        missing = next(cr for cr, f in files[streamed[0]].items() if not f.exists())
        raise ValueError(f"the crop of {streamed[0].parent.name}/{streamed[0].name} at CR "
                         f"{missing:g} is not in {cache}: a streamed phantom view is preprocessed "
                         f"only while its study is streamed (at the CRs of that run)")
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
        if workers > 1 and len(todo) > 1:
            context = multiprocessing.get_context("spawn")  # torch and fork do not mix
            with ProcessPoolExecutor(min(workers, len(todo)), context, worker_init) as pool:
                jobs = [pool.submit(_ensure_view, *v, files[v[0]], p, cache) for v in todo]
                for done, job in enumerate(jobs, start=1):
                    job.result()
                    if progress:
                        progress(done, len(todo))
        else:
            for done, v in enumerate(todo, start=1):
                _ensure_view(*v, files[v[0]], p, cache)
                if progress:
                    progress(done, len(todo))
    return files


@dataclass(frozen=True)
class Reach:
    """Which CRs asked every view of a dataset can be compressed at (`kept`) and which not
    (`skipped`), `highest` the highest CR every view reaches, `views` the views' reach in words."""

    kept: tuple[float, ...]
    skipped: tuple[float, ...]
    highest: int | None  # None: no view's size could be read (preprocessing will say why)
    views: str


def raw_bytes(dataset: Dataset) -> int:
    """Rows x Columns x Samples x BitsAllocated / 8 of an image's header (the CR's numerator)."""
    return int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1)) * \
        int(dataset.BitsAllocated) // 8


def _raw_bytes(path: Path) -> int | None:
    """`raw_bytes` read from the file's header, or None if unreadable."""
    try:
        return raw_bytes(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "Rows", "Columns", "SamplesPerPixel", "BitsAllocated"]))
    except (OSError, ValueError, TypeError, AttributeError, InvalidDicomError):
        return None


def cr_reach(breasts: list[Breast], crs: list[float]) -> Reach:
    """Which of `crs` every view of `breasts` can be written at (`reach_of`), from the headers."""
    views = {path: header for b in breasts
             for path, header in zip((b.cc, b.mlo), b.headers or (None, None), strict=True)}
    return reach_of([h.raw_bytes if h is not None else _raw_bytes(path)
                     for path, h in views.items()], crs)


def reach_of(sizes: Iterable[int | None], crs: list[float]) -> Reach:
    """Which of `crs` every view of these uncompressed sizes in bytes (None: unreadable) can be
    written at: a codestream keeps at least MIN_CODESTREAM_BYTES, so small images cannot reach
    the highest CRs."""
    reach: Counter[int] = Counter(highest_ratio(raw) for raw in sizes if raw is not None)
    if not reach:
        return Reach(tuple(crs), (), None, "no view's size could be read")
    highest = min(reach)
    views = ", ".join(f"{n} view(s) reach at most CR {h}" for h, n in sorted(reach.items()))
    return Reach(tuple(c for c in crs if c == 1.0 or c <= highest),
                 tuple(c for c in crs if c != 1.0 and c > highest), highest,
                 f"{views}; a codestream keeps at least {MIN_CODESTREAM_BYTES} bytes")


@dataclass(frozen=True, eq=False)
class BreastInputs:
    """The model inputs of a list of breasts: per CR an array (breasts, rows, columns) of
    float16, memory-mapped; and the preprocessing that made them (its canvas derived from the
    data when it was not given)."""

    preprocessing: Preprocessing
    arrays: dict[float, np.ndarray]

    def __getitem__(self, cr: float) -> np.ndarray:
        return self.arrays[cr]


def breast_inputs(breasts: list[Breast], crs: list[float], p: Preprocessing, cache: Path,
                  workers: int = 1, progress: Callable[[int, int], None] | None = None
                  ) -> BreastInputs:
    """The model inputs of `breasts` (in their order) at every CR of `crs`.

    Without a canvas in `p`, the canvas is the one that holds every crop of these breasts (the
    paper's pitch, padded); with one (a model file's), a crop that does not fit is refused."""
    if not breasts:
        raise ValueError("no breasts to preprocess")
    files = view_crops(breasts, crs, p, cache, workers, progress)
    if p.canvas is None:
        shapes = [np.load(f[crs[0]], mmap_mode="r").shape for f in files.values()]
        p = p.with_canvas([(int(r), int(c)) for r, c in shapes])
    arrays = {}
    for cr in crs:
        pairs = [(files[b.cc][cr], files[b.mlo][cr]) for b in breasts]
        views = [(a.name, b.name) for a, b in pairs]
        target = cache / f"inputs-{_hash({'p': p.as_dict(), 'cr': cr, 'views': views})}.npy"
        if not target.exists():
            partial = target.with_name(f".{target.stem}.{os.getpid()}.partial.npy")
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=STORED,
                                            shape=(len(pairs), *p.model_input))
            for i, (cc, mlo) in enumerate(pairs):
                out[i] = breast_input(np.load(cc).astype(np.float32),
                                      np.load(mlo).astype(np.float32), p)
            out.flush()
            del out
            partial.replace(target)
        arrays[cr] = np.load(target, mmap_mode="r")
    return BreastInputs(p, arrays)
