"""Preprocessed inputs at each CR, cached on disk by SOP Instance UID, CR and preprocessing.

All CRs of a view come from one encode (the transcoder's ladder). A rerun never recomputes a
cached input. Missing views are computed by a pool of processes, one view per task.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom

from ..codec.j2k import decode, encode_ladder
from ..dicom.source import read_source
from .dataset import Breast
from .preprocess import Preprocessing, breast_input, normalise_image, resize_and_crop


def _key(sop_uid: str, cr: float, p: Preprocessing) -> str:
    """The cached crop depends on the view, the CR and every parameter but the input size."""
    params = {k: v for k, v in asdict(p).items() if k != "input_size"}
    text = json.dumps({"sop": sop_uid, "cr": cr, "p": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _files(path: Path, crs: list[float], p: Preprocessing, cache: Path) -> dict[float, Path]:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    uid = str(header.SOPInstanceUID)
    return {cr: cache / f"{_key(uid, cr, p)}.npy" for cr in crs}


def _ensure_view(path: Path, laterality: str, view: str, files: dict[float, Path],
                 p: Preprocessing) -> None:
    """Compute and store the preprocessed crop of one view at every CR (`files`: where each
    goes) that the cache lacks."""
    missing = [cr for cr, f in files.items() if not f.exists()]
    if missing:
        source = read_source(path)
        decoded = {1.0: source.pixels} if 1.0 in missing else {}
        lossy = [cr for cr in missing if cr != 1.0]
        if lossy:
            for item in encode_ladder(source.pixels, source.bits_stored, lossy,
                                      source.bits_allocated, with_psnr=False):
                decoded[item.target_cr] = decode(item.codestream)
        for cr, pixels in decoded.items():
            image = normalise_image(pixels, source.dataset)
            partial = files[cr].with_name(f".{files[cr].stem}.{os.getpid()}.partial.npy")
            np.save(partial, resize_and_crop(image, laterality, view, p))
            partial.replace(files[cr])  # a killed run leaves no half-written input behind


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one view per process: no oversubscription of the cores


def breast_inputs(breasts: list[Breast], crs: list[float], p: Preprocessing, cache: Path,
                  workers: int = 1, progress: Callable[[int, int], None] | None = None
                  ) -> dict[float, np.ndarray]:
    """{CR: array (breasts, rows, columns)} of model inputs, in the order of `breasts`.

    `progress(done, total)` is called as views missing from the cache are computed."""
    views = [(b.cc, b.laterality, "CC") for b in breasts] + \
            [(b.mlo, b.laterality, "MLO") for b in breasts]
    files = {v[0]: _files(v[0], crs, p, cache) for v in views}  # one header read per view
    todo = [v for v in views if not all(f.exists() for f in files[v[0]].values())]
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
        if workers > 1 and len(todo) > 1:
            context = multiprocessing.get_context("spawn")  # torch and fork do not mix
            with ProcessPoolExecutor(min(workers, len(todo)), context, _worker_init) as pool:
                jobs = [pool.submit(_ensure_view, *v, files[v[0]], p) for v in todo]
                for done, job in enumerate(jobs, start=1):
                    job.result()
                    if progress:
                        progress(done, len(todo))
        else:
            for done, v in enumerate(todo, start=1):
                _ensure_view(*v, files[v[0]], p)
                if progress:
                    progress(done, len(todo))
    out: dict[float, list[np.ndarray]] = {cr: [] for cr in crs}
    for breast in breasts:
        cc = {cr: np.load(f) for cr, f in files[breast.cc].items()}
        mlo = {cr: np.load(f) for cr, f in files[breast.mlo].items()}
        for cr in crs:
            out[cr].append(breast_input(cc[cr], mlo[cr], p))
    return {cr: np.stack(v) for cr, v in out.items()}
