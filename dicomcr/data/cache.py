"""Preprocessed inputs at each CR, cached on disk by SOP Instance UID, CR and preprocessing.

All CRs of a view come from one encode (the transcoder's ladder). A rerun never recomputes a
cached input.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom

from ..codec.j2k import decode, encode_ladder
from ..dicom.source import read_source
from .dataset import Breast
from .preprocess import Preprocessing, breast_input, normalise, resize_and_crop


def _key(sop_uid: str, cr: float, p: Preprocessing) -> str:
    text = json.dumps({"sop": sop_uid, "cr": cr, "p": asdict(p)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _views_at(path: Path, laterality: str, view: str, crs: list[float], p: Preprocessing,
              cache: Path) -> dict[float, np.ndarray]:
    """The preprocessed crop of one view at every CR, from the cache or computed once."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    uid = str(header.SOPInstanceUID)
    files = {cr: cache / f"{_key(uid, cr, p)}.npy" for cr in crs}
    missing = [cr for cr, f in files.items() if not f.exists()]
    if missing:
        source = read_source(path)
        ds = source.dataset
        window = None
        if "WindowCenter" in ds and "WindowWidth" in ds:
            window = (float(np.ravel(ds.WindowCenter)[0]), float(np.ravel(ds.WindowWidth)[0]))
        decoded = {1.0: source.pixels} if 1.0 in missing else {}
        lossy = [cr for cr in missing if cr != 1.0]
        if lossy:
            for item in encode_ladder(source.pixels, source.bits_stored, lossy,
                                      source.bits_allocated, with_psnr=False):
                decoded[item.target_cr] = decode(item.codestream)
        cache.mkdir(parents=True, exist_ok=True)
        for cr, pixels in decoded.items():
            image = normalise(pixels, source.bits_stored, str(ds.PhotometricInterpretation),
                              window)
            np.save(files[cr], resize_and_crop(image, laterality, view, p))
    return {cr: np.load(f) for cr, f in files.items()}


def breast_inputs(breasts: list[Breast], crs: list[float], p: Preprocessing, cache: Path
                  ) -> dict[float, np.ndarray]:
    """{CR: array (breasts, rows, columns)} of model inputs, in the order of `breasts`."""
    out: dict[float, list[np.ndarray]] = {cr: [] for cr in crs}
    for breast in breasts:
        cc = _views_at(breast.cc, breast.laterality, "CC", crs, p, cache)
        mlo = _views_at(breast.mlo, breast.laterality, "MLO", crs, p, cache)
        for cr in crs:
            out[cr].append(breast_input(cc[cr], mlo[cr], p))
    return {cr: np.stack(v) for cr, v in out.items()}
