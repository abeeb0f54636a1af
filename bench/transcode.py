"""Benchmark the transcoder against OpenJPEG's own command line, on full-size phantom images.

    .venv/bin/python bench/transcode.py [--studies 1] [--workers N]

1. Single CR: wall time of `dicomcr transcode --cr 20` (all workers) against `opj_compress
   -threads <cores>` on the same images at the same rate; the PGM files opj_compress reads are
   written first and not timed. Printed as a throughput ratio (opj time / dicomcr time).
2. The paper's 10-CR ladder: `dicomcr transcode --ladder paper` against one opj_compress run per CR.
3. Peak memory of one worker transcoding one Hologic image (the ladder), above the worker's
   memory before the job, in multiples of the uncompressed image.
It also prints the worst achieved-CR error of the ladder run. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from dicomcr.codec.j2k import PAPER_LADDER
from dicomcr.phantom import CohortSpec, write_cohort


def _pgm(path: Path, out: Path) -> None:
    ds = pydicom.dcmread(path)
    header = f"P5\n{ds.Columns} {ds.Rows}\n{(1 << ds.BitsStored) - 1}\n".encode()
    out.write_bytes(header + ds.pixel_array.astype(">u2").tobytes())


def _opj(pgms: list[tuple[Path, int]], crs: tuple[float, ...], threads: int, out: Path) -> float:
    start = time.perf_counter()
    for pgm, bits in pgms:
        for cr in crs:
            rate = cr * bits / 16  # opj_compress's rate counts BitsStored, the paper's CR 16 bits
            subprocess.run(["opj_compress", "-i", str(pgm), "-o", str(out / f"{pgm.stem}.j2k"),
                            "-r", f"{rate:g}", "-threads", str(threads)],
                           check=True, capture_output=True)
    return time.perf_counter() - start


def _dicomcr(src: Path, out: Path, args: list[str], workers: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dicomcr", "transcode", str(src), str(out), *args,
                    "--workers", str(workers)], check=True, capture_output=True)
    return time.perf_counter() - start


PEAK_SCRIPT = """
import sys
from pathlib import Path
import numpy, openjpeg, pydicom, pydicom.pixels
from dicomcr.transcode import transcode_file

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

# The high-water mark survives fork and exec: reset it once the imports are done (Linux >= 4.0).
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = peak()
rows = transcode_file(Path(sys.argv[1]), Path(sys.argv[2]), Path("x.dcm"), %r)
assert rows[0].status == "ok", rows
print(before, peak())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1, help="full-size studies per vendor")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = write_cohort(CohortSpec(n_studies=2 * args.studies, seed=7, size="full",
                                      vendor="mixed"), tmp / "src", workers=args.workers).dicom
        files = sorted(src.glob("*/*.dcm"))
        pgms = []
        for path in files:
            pgm = tmp / "pgm" / f"{path.parent.name}_{path.stem}.pgm"
            pgm.parent.mkdir(exist_ok=True)
            _pgm(path, pgm)
            pgms.append((pgm, int(pydicom.dcmread(path, stop_before_pixels=True).BitsStored)))
        (tmp / "opj").mkdir()
        print(f"{len(files)} full-size images ({args.studies} Hologic + {args.studies} GE "
              f"studies), {args.workers} workers / opj_compress threads")

        opj = _opj(pgms, (20,), args.workers, tmp / "opj")
        ours = _dicomcr(src, tmp / "single", ["--cr", "20"], args.workers)
        print(f"1. CR 20: dicomcr {ours:.1f} s, opj_compress {opj:.1f} s, "
              f"throughput ratio {opj / ours:.2f} (target >= 1.0)")

        opj = _opj(pgms, PAPER_LADDER, args.workers, tmp / "opj")
        ours = _dicomcr(src, tmp / "ladder", ["--ladder", "paper"], args.workers)
        print(f"2. paper ladder (10 CRs): dicomcr {ours:.1f} s, opj_compress x10 {opj:.1f} s, "
              f"ratio {opj / ours:.2f} (target >= 8)")
        with open(tmp / "ladder" / "manifest.csv") as handle:
            rows = list(csv.DictReader(handle))
        errors = {cr: max(abs(float(r["achieved_cr"]) / cr - 1) for r in rows
                          if float(r["target"]) == cr) for cr in PAPER_LADDER}
        print("   worst achieved-CR error per target: "
              + ", ".join(f"{cr:g}: {100 * e:.1f}%" for cr, e in errors.items()))

        hologic = next(p for p in files if pydicom.dcmread(
            p, stop_before_pixels=True).Manufacturer.startswith("HOLOGIC"))
        image = pydicom.dcmread(hologic, stop_before_pixels=True)
        raw = image.Rows * image.Columns * 2
        for label, targets in (("CR 20", [20]), ("ladder", list(PAPER_LADDER))):
            run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT % (targets,), str(hologic),
                                  str(tmp / "peak")], check=True, capture_output=True, text=True)
            before, after = (int(v) for v in run.stdout.split())
            print(f"3. peak memory of a worker, {label}: {(after - before) / 2**20:.0f} MiB above "
                  f"its {before / 2**20:.0f} MiB start = {(after - before) / raw:.2f} x the "
                  f"{raw / 2**20:.0f} MiB image (target <= 3)")


if __name__ == "__main__":
    main()
