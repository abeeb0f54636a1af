"""Transcoding jobs: one input file in, one output image per target CR out, and a typed row each.

`transcode_file` is the unit of work of both `dicomcr transcode` and the node's worker: a pure
function of its arguments (no state between calls), safe to run in any process, idempotent (the
same input writes the same output objects under the same names). `transcode_tree` is `dicomcr
transcode`: every DICOM file of a file or folder through a pool of processes, and the manifest.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from .codec.j2k import (
    PAPER_LADDER,
    Encoded,
    check_ratio,
    encode_ladder,
    encode_lossless,
    target_problems,
    uncompressed_bytes,
)
from .dicom.derive import cr_label, derive
from .dicom.source import InputError, has_dicm_preamble, read_source
from .outputs import output_folder, partial_name

if TYPE_CHECKING:
    from rich.table import Table


class Ladder(StrEnum):
    """A named list of target CRs."""

    PAPER = "paper"  # the paper's ten lossy CRs, 15 ... 11000

    @property
    def crs(self) -> tuple[float, ...]:
        return tuple(float(cr) for cr in {Ladder.PAPER: PAPER_LADDER}[self])


@dataclass(frozen=True)
class Transcoded:
    """One output of `transcode_file`: one target CR (or lossless) of one source file."""

    source: Path
    output: Path | None  # the file written; None when this target failed
    target_cr: float | None  # None for lossless
    achieved_cr: float | None  # measured on the written codestream; None when failed
    psnr_db: float | None  # the paper's Eq. 1, only when asked for (psnr=True)
    ok: bool
    error: str = ""  # why it failed; "" when ok
    seconds: float = 0.0  # the file's time shared among its outputs: rows add up to it

    @property
    def label(self) -> str:
        """The target as the manifest and the output folder name it: "20", "11000", "lossless"."""
        return "lossless" if self.target_cr is None else f"{self.target_cr:g}"

    @property
    def status(self) -> str:
        """"ok" or "failed", as manifest.csv writes it (read `ok` rather than this)."""
        return "ok" if self.ok else "failed"

    @property
    def cr_error(self) -> float | None:
        """Achieved CR relative to the target (0.01 = 1 % above); None for lossless or failed."""
        if self.target_cr is None or self.achieved_cr is None:
            return None
        return self.achieved_cr / self.target_cr - 1.0

    def to_manifest(self) -> ManifestRow:
        return ManifestRow(
            str(self.source), "" if self.output is None else str(self.output), self.label,
            "" if self.achieved_cr is None else f"{self.achieved_cr:.2f}",
            "" if self.psnr_db is None else f"{self.psnr_db:.2f}", self.status, self.error,
            f"{self.seconds:.2f}" if self.ok else "")


@dataclass(frozen=True)
class ManifestRow:
    """One line of OUT/manifest.csv, as written (`Transcoded.to_manifest`); nothing reads it back."""

    source: str
    output: str
    target: str  # "20", "11000" or "lossless"
    achieved_cr: str
    psnr_db: str  # empty unless PSNR was asked for
    status: str  # "ok" or "failed"
    error: str = ""
    seconds: str = ""


MANIFEST_COLUMNS = tuple(f.name for f in fields(ManifestRow))


def _write_atomically(ds, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(path)
    ds.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


def transcode_file(
    source_path: Path, out: Path, relative: Path, targets: Sequence[float], lossless: bool = False,
    *, psnr: bool = False,
) -> list[Transcoded]:
    """Transcode one file into OUT/<cr label>/<relative>; failures become rows, never exceptions.

    One row per target (highest CR first, lossless last). Each target succeeds or fails on its
    own: a CR out of reach for this image fails its row with the reason, the others are written.
    The achieved CR is always measured; PSNR only with `psnr` (it decodes every output).
    """
    start = time.perf_counter()
    source_path = Path(source_path)
    wanted: list[float | None] = sorted({float(cr) for cr in targets}, reverse=True)
    if lossless:
        wanted.append(None)

    def failed(target: float | None, reason: str) -> Transcoded:
        return Transcoded(source_path, None, target, None, None, False, reason)

    try:
        source = read_source(source_path)
    except (InputError, ValueError) as exc:
        return [failed(target, str(exc)) for target in wanted]
    lossy = [cr for cr in wanted if cr is not None]
    problems = target_problems(lossy, uncompressed_bytes(source.pixels, source.bits_allocated))
    rows: dict[float | None, Transcoded] = {cr: failed(cr, why) for cr, why in problems.items()}
    reachable = [cr for cr in lossy if cr not in rows]
    encoded: list[Encoded] = []
    if reachable:
        try:
            encoded += encode_ladder(source.pixels, source.bits_stored, reachable,
                                     source.bits_allocated, psnr=psnr)
        except (InputError, ValueError) as exc:
            rows.update((cr, failed(cr, str(exc))) for cr in reachable)
    if lossless:
        try:
            encoded.append(encode_lossless(source.pixels, source.bits_stored,
                                           source.bits_allocated, psnr=psnr))
        except (InputError, ValueError) as exc:
            rows[None] = failed(None, str(exc))
    written = []
    for item in encoded:
        destination = out / cr_label(item.target_cr) / relative
        _write_atomically(derive(source.dataset, item, source.lossy), destination)
        written.append((item, destination))
    seconds = (time.perf_counter() - start) / max(len(written), 1)
    for item, destination in written:
        rows[item.target_cr] = Transcoded(source_path, destination, item.target_cr,
                                          item.achieved_cr, item.psnr_db, True, "", seconds)
    return [rows[target] for target in wanted]


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


def write_manifest(rows: Sequence[Transcoded], path: Path) -> None:
    """OUT/manifest.csv: one line per row, MANIFEST_COLUMNS (psnr_db empty unless measured)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(row.to_manifest()) for row in rows)


@dataclass(frozen=True)
class TreeTranscoded:
    """What `transcode_tree` did: every row of every input file, and where the manifest is."""

    out: Path
    files: int  # input files
    rows: list[Transcoded]
    manifest: Path

    @property
    def failed(self) -> list[Transcoded]:
        return [row for row in self.rows if not row.ok]

    def failures(self) -> str:
        """How many outputs failed, in how many files."""
        files = len({row.source for row in self.failed})
        return f"{len(self.failed)} of {len(self.rows)} output(s) failed, in {files} of {self.files} file(s)"


def transcode_tree(source: Path, out: Path, targets: Sequence[float], lossless: bool = False, *,
                   psnr: bool = False, workers: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> TreeTranscoded:
    """Transcode a DICOM file, or every DICOM file under a folder, into OUT/<cr label>/... (see
    `transcode_file`) with `workers` processes, and write OUT/manifest.csv; `progress(done,
    total)` after each file. A file or target that fails is a failed row; a full disk or a worker process
    that died stops the run with that error (and no manifest).

    ValueError, before any work, for a bad target, nothing to do, no DICOM file under `source`
    (or no `source`) and an `out` that cannot be written."""
    if not targets and not lossless:
        raise ValueError("nothing to do: give --cr, --ladder or --lossless")
    targets = [check_ratio(t) for t in targets]
    try:
        inputs = list(find_inputs(source))
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from exc
    if not inputs:
        raise ValueError(f"no DICOM files under {source}")
    output_folder(out)
    rows: list[Transcoded] = []
    with ProcessPoolExecutor(max(1, min(workers, len(inputs)))) as pool:
        jobs = [pool.submit(transcode_file, path, out, relative, targets, lossless, psnr=psnr)
                for path, relative in inputs]
        for done, job in enumerate(jobs, start=1):
            rows += job.result()
            if progress:
                progress(done, len(jobs))
    write_manifest(rows, out / "manifest.csv")
    return TreeTranscoded(out, len(inputs), rows, out / "manifest.csv")


def transcode_table(run: TreeTranscoded, psnr: bool, limit: int = 200) -> Table:
    """The rows of `run` (the first `limit`) as a rich table for a terminal: file, target and
    achieved CR, PSNR when measured, status with the reason of a failure."""
    from rich.table import Table

    table = Table(title=f"Transcoded {run.files} file(s) into {run.out}")
    columns = ("file", "target CR", "achieved CR", *(("PSNR dB",) if psnr else ()), "status")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in run.rows[:limit]:
        line = row.to_manifest()
        table.add_row(line.source, line.target, line.achieved_cr, *((line.psnr_db,) if psnr else ()),
                      "ok" if row.ok else f"[red]failed: {row.error}[/]")
    if len(run.rows) > limit:
        table.add_row("…", f"{len(run.rows) - limit} more rows in manifest.csv",
                      *[""] * (len(columns) - 2))
    return table
