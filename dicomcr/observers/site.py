"""Detectability at the CRs a site stores, for the audit: phantom views of the site's vendor,
each CR its own run, cached by CR, detector geometry and codec revision.

`site_detectability("hologic", [20, 5000], cache)` runs (once) a task with CRs (1, 20) and one
with (1, 5000) on full-size views of that vendor's detector, in
CACHE/<vendor>-<columns>x<rows>-<pitch>mm-codec<r>-observers<r>/cr-<CR>[-quick]/, and returns
their rows at 20 and at 5000 (each with its paired difference against CR 1). A later audit that
sees the same CRs reads the cached results.json and computes nothing; a new CR adds one run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from ..codec.j2k import CODEC_REVISION
from ..phantom.params import DETECTORS
from .experiment import run_detectability
from .measure import OBSERVERS_REVISION
from .results import DetectabilityError, DetectabilityRow, DetectabilitySpec


def site_folder(cache: Path, vendor: str, cr: float, quick: bool) -> Path:
    """Where the run of one vendor's geometry at one CR is cached."""
    if vendor not in DETECTORS:
        raise DetectabilityError(f"unknown vendor {vendor!r}; choose from {', '.join(DETECTORS)}")
    d = DETECTORS[vendor]
    geometry = f"{vendor}-{d.columns}x{d.rows}-{d.pixel_spacing_mm:g}mm"
    revisions = f"codec{CODEC_REVISION}-observers{OBSERVERS_REVISION}"
    return Path(cache) / f"{geometry}-{revisions}" / f"cr-{cr:g}{'-quick' if quick else ''}"


def site_detectability(vendor: str, crs: Iterable[float], cache: Path, quick: bool = True,
                       workers: int | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       task: DetectabilitySpec | None = None) -> list[DetectabilityRow]:
    """The rows (every finding, size, pitch and observer) at each lossy CR in `crs` (1 and
    lossless, None, are the reference, not a CR to judge), on phantom views of `vendor`'s
    detector. `task` sets the findings, sizes, pairs... (its CRs and vendors are replaced);
    default: every finding type at the default sizes, `quick` or full.

    Each CR is checked before any run (DetectabilityError: unknown vendor, a CR the view cannot
    reach); each run is cached, so auditing the same CRs again costs a file read."""
    base = task or DetectabilitySpec(vendors=(vendor,), quick=quick)
    wanted = sorted({float(cr) for cr in crs if cr is not None and float(cr) != 1.0})
    specs = {cr: replace(base, crs=(1.0, cr), vendors=(vendor,)) for cr in wanted}
    rows: list[DetectabilityRow] = []
    for cr, spec in specs.items():
        results = run_detectability(spec, site_folder(cache, vendor, cr, spec.quick), workers,
                                    progress)
        rows += [r for r in results.rows if r.cr == cr]
    return rows
