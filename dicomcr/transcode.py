"""Transcoding jobs: one input file in, one output image per target CR out, and a manifest row each.

`transcode_file` is the unit of work of both `dicomcr transcode` and the node's worker: a pure
function of its arguments (no state between calls), safe to run in any process, idempotent (the
same input writes the same output objects under the same names).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .codec.j2k import (
    PAPER_LADDER,
    Encoded,
    encode_ladder,
    encode_lossless,
    target_problems,
    uncompressed_bytes,
)
from .dicom.derive import cr_label, derive
from .dicom.source import InputError, has_dicm_preamble, read_source

LADDERS = {"paper": PAPER_LADDER}


@dataclass(frozen=True)
class ManifestRow:
    """One line of OUT/manifest.csv."""

    source: str
    output: str
    target: str  # "20", "11000" or "lossless"
    achieved_cr: str
    psnr_db: str
    status: str  # "ok" or "failed"
    error: str = ""
    seconds: str = ""


MANIFEST_COLUMNS = tuple(f.name for f in fields(ManifestRow))


def _write_atomically(ds, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    ds.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


def transcode_file(
    source_path: Path, out: Path, relative: Path, targets: Sequence[float], lossless: bool = False,
) -> list[ManifestRow]:
    """Transcode one file into OUT/<cr label>/<relative>; failures become rows, never exceptions.

    One row per target (highest CR first, lossless last). Each target succeeds or fails on its
    own: a CR out of reach for this image fails its row with the reason, the others are written.
    """
    start = time.perf_counter()
    wanted = sorted({float(cr) for cr in targets}, reverse=True)
    labels = [f"{cr:g}" for cr in wanted] + (["lossless"] if lossless else [])

    def failed(label: str, reason: str) -> ManifestRow:
        return ManifestRow(str(source_path), "", label, "", "", "failed", reason)

    try:
        source = read_source(source_path)
    except (InputError, ValueError) as exc:
        return [failed(label, str(exc)) for label in labels]
    problems = target_problems(wanted, uncompressed_bytes(source.pixels, source.bits_allocated))
    rows = {f"{cr:g}": failed(f"{cr:g}", reason) for cr, reason in problems.items()}
    reachable = [cr for cr in wanted if f"{cr:g}" not in rows]
    encoded: list[Encoded] = []
    if reachable:
        try:
            encoded += encode_ladder(source.pixels, source.bits_stored, reachable,
                                     source.bits_allocated)
        except (InputError, ValueError) as exc:
            rows.update((f"{cr:g}", failed(f"{cr:g}", str(exc))) for cr in reachable)
    if lossless:
        try:
            encoded.append(encode_lossless(source.pixels, source.bits_stored,
                                           source.bits_allocated))
        except (InputError, ValueError) as exc:
            rows["lossless"] = failed("lossless", str(exc))
    seconds = (time.perf_counter() - start) / max(len(encoded), 1)
    for item in encoded:
        destination = out / cr_label(item.target_cr) / relative
        _write_atomically(derive(source.dataset, item, source.lossy), destination)
        label = "lossless" if item.lossless else f"{item.target_cr:g}"
        rows[label] = ManifestRow(str(source_path), str(destination), label,
                                  f"{item.achieved_cr:.2f}", f"{item.psnr_db:.2f}", "ok", "",
                                  f"{seconds:.2f}")
    return [rows[label] for label in labels]


def is_dicom_candidate(path: Path) -> bool:
    """Files a folder walk hands to the transcoder: *.dcm, or anything with the DICM preamble."""
    return path.suffix.lower() == ".dcm" or has_dicm_preamble(path)


def find_inputs(root: Path) -> Iterator[tuple[Path, Path]]:
    """(path, path relative to the output series) for a file, or every DICOM file under a folder."""
    root = Path(root)
    if root.is_file():
        yield root, Path(root.name)
        return
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist")
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if is_dicom_candidate(path):
            yield path, path.relative_to(root)


def write_manifest(rows: Sequence[ManifestRow], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
