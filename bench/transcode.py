"""Benchmark the transcoder's CR ladder against OpenJPEG's own command line, and its peak memory.

    .venv/bin/python bench/transcode.py [--seed 51] [--view LCC] [--repeat 3]

One full-size Hologic view of the phantom (3328 x 4096, 12 bits in 16: 26 MiB uncompressed).

1. The paper's ladder (10 CRs, 15 ... 11000) through `transcode_file`, as the node's worker runs it
   (read the DICOM file, encode, write 10 DICOM files; no PSNR), in a child process, against ten
   `opj_compress -threads 1` runs at the ladder's rates on the same pixels (a PGM written first,
   not timed). One worker is one process on one core, so both sides use one thread. Wall and CPU
   time, median of --repeat runs; target: the ladder >= 8x faster, ladder / 10 x opj <= 0.125.
2. The peak resident memory of the transcoding process (VmHWM, reset once the imports are done),
   above its start and in all, as multiples of the uncompressed image; target: about 5x, what one
   single-tile OpenJPEG encode needs (opj_compress's own peak is printed beside it).
3. The achieved CR of every target, as recorded in the rows, and what --psnr would add.
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from dicomcr.codec.j2k import PAPER_LADDER, tolerance
from dicomcr.phantom import CohortSpec, write_cohort

TARGET_RATIO = 1 / 8  # ladder time / ten opj_compress runs

CHILD = """
import json, resource, sys, time
from pathlib import Path
from dicomcr.transcode import transcode_file

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

try:  # the high-water mark survives fork and exec: reset it once the imports are done
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
except OSError:
    pass
before = hwm()
wall, cpu = time.perf_counter(), time.process_time()
rows = transcode_file(Path(sys.argv[1]), Path(sys.argv[2]), Path("x.dcm"), json.loads(sys.argv[3]),
                      psnr=sys.argv[4] == "psnr")
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
assert all(row.ok for row in rows), rows
print(json.dumps({"wall": wall, "cpu": cpu, "before": before, "peak": hwm(),
                  "rows": [(row.target_cr, row.achieved_cr, row.psnr_db) for row in rows]}))
"""


def _transcode(image: Path, out: Path, psnr: bool = False) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, str(image), str(out),
                          json.dumps(list(PAPER_LADDER)), "psnr" if psnr else "-"],
                         check=True, capture_output=True, text=True)
    return json.loads(run.stdout)


def _opj(pgm: Path, bits_stored: int, out: Path) -> tuple[float, float, int | None]:
    """Ten opj_compress runs, one per CR of the ladder: (wall s, CPU s, largest peak RSS).

    The peak comes from /usr/bin/time when installed: a forked child's own maximum RSS would
    count this (large) Python process's pages until the exec."""
    timer = ["/usr/bin/time", "-f", "%M"] if Path("/usr/bin/time").exists() else []
    wall, cpu, peak = time.perf_counter(), 0.0, None
    for cr in PAPER_LADDER:
        rate = cr * bits_stored / 16  # opj_compress's rate counts BitsStored, the paper's CR 16 bits
        child = subprocess.Popen([*timer, "opj_compress", "-i", str(pgm), "-o", str(out), "-r",
                                  f"{rate:g}", "-threads", "1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        report = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)  # the timer's usage includes opj_compress's
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"opj_compress failed at CR {cr:g}: {report.strip()}")
        cpu += usage.ru_utime + usage.ru_stime
        if timer:
            peak = max(peak or 0, int(report.split()[-1]) * 1024)
    return time.perf_counter() - wall, cpu, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=51, help="phantom seed (study 0 is Hologic)")
    parser.add_argument("--view", default="LCC", choices=("LCC", "LMLO", "RCC", "RMLO"))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; medians printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cohort = write_cohort(CohortSpec(n_studies=1, seed=args.seed, size="full",
                                         vendor="hologic"), tmp / "src", workers=1)
        image = next(cohort.dicom.glob(f"*/{args.view}.dcm"))
        ds = pydicom.dcmread(image)
        raw = ds.Rows * ds.Columns * ds.BitsAllocated // 8
        pgm = tmp / "image.pgm"
        header = f"P5\n{ds.Columns} {ds.Rows}\n{(1 << ds.BitsStored) - 1}\n".encode()
        pgm.write_bytes(header + ds.pixel_array.astype(">u2").tobytes())
        print(f"{ds.Manufacturer} {args.view}, seed {args.seed}: {ds.Columns} x {ds.Rows}, "
              f"{ds.BitsStored} bits stored, {raw / 2**20:.1f} MiB uncompressed; "
              f"{os.cpu_count()} cores, one thread each side, median of {args.repeat}")

        ladders, opjs = [], []
        for run in range(args.repeat):  # interleaved, so that a busy machine slows both alike
            ladders.append(_transcode(image, tmp / f"ladder{run}"))
            opjs.append(_opj(pgm, int(ds.BitsStored), tmp / "opj.j2k"))
        wall = statistics.median(r["wall"] for r in ladders)
        cpu = statistics.median(r["cpu"] for r in ladders)
        opj_wall = statistics.median(o[0] for o in opjs)
        opj_cpu = statistics.median(o[1] for o in opjs)
        print(f"1. paper ladder (10 CRs) through transcode_file, no PSNR: {wall:.2f} s wall, "
              f"{cpu:.2f} s CPU")
        print(f"   10 x opj_compress -threads 1 at the same rates: {opj_wall:.2f} s wall, "
              f"{opj_cpu:.2f} s CPU")
        print(f"   ladder / 10 x opj_compress = {wall / opj_wall:.3f} wall, {cpu / opj_cpu:.3f} "
              f"CPU ({opj_wall / wall:.1f}x, {opj_cpu / cpu:.1f}x faster; target <= "
              f"{TARGET_RATIO:.3f}, >= {1 / TARGET_RATIO:.0f}x)")

        last = ladders[-1]
        above = last["peak"] - last["before"]
        opj_peak = opjs[-1][2]
        print(f"2. peak memory of the transcoding process: {above / 2**20:.0f} MiB above its "
              f"{last['before'] / 2**20:.0f} MiB start = {above / raw:.1f}x the image "
              f"({last['peak'] / 2**20:.0f} MiB in all; target about 5x)"
              + ("" if opj_peak is None else f"; one opj_compress: {opj_peak / 2**20:.0f} MiB "
                 f"= {opj_peak / raw:.1f}x"))

        errors = {target: achieved / target - 1 for target, achieved, _ in last["rows"]}
        print("3. achieved CR, error per target: " + ", ".join(
            f"{target:g}: {100 * e:+.2f}%" for target, e in sorted(errors.items())))
        outside = [t for t, e in errors.items() if abs(e) > tolerance(t)]
        print("   all within 2 % up to 5K and 8 % above" if not outside else
              f"   outside the tolerance: {', '.join(f'{t:g}' for t in sorted(outside))}")
        with_psnr = _transcode(image, tmp / "psnr", psnr=True)
        print(f"   with --psnr: {with_psnr['wall']:.2f} s wall, {with_psnr['cpu']:.2f} s CPU "
              f"(+{with_psnr['cpu'] - cpu:.2f} s CPU for the 10 decodes); PSNR "
              + ", ".join(f"{t:g}: {p:.1f} dB" for t, _, p in sorted(with_psnr["rows"])))


if __name__ == "__main__":
    main()
