"""Benchmark the detectability experiment (issue 22, part 5): seconds per CR ladder (the encode
and the decodes of one full-size view), per observer and in all, for `--quick` and the full run.

    .venv/bin/python bench/detectability.py [--workers 2] [--quick-only] [--out DIR]

Targets on 2 cores: the quick run within 60 s, the full run (eleven CRs, every finding type and
size, both pitches, both vendors, 200 pairs per finding type and vendor) within 15 minutes. Each
run starts from an empty folder (`--out` keeps the full run's). Besides wall time it prints CPU
seconds, summed over the processes: on a machine others share, the wall time grows with their
load, the CPU seconds hardly; "idle estimate" is the run's serial part plus its parallel CPU
seconds over the workers, what the run takes on `--workers` cores of its own. Not a test: it
prints figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from dicomcr.codec.j2k import PAPER_CRS, decode, encode_ladder
from dicomcr.observers import DetectabilitySpec, run_detectability
from dicomcr.observers.measure import ViewTask, render_pair
from dicomcr.phantom.params import DETECTORS


def _cpu() -> float:
    """CPU seconds of this process and of its children that have ended."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ladder(vendor: str) -> None:
    """One view of `vendor` through the paper's ladder: one layered encode, ten decodes."""
    pixels = render_pair(ViewTask(vendor, 0, 0, (), (), (1.0,), (), (), Path("unused")))[0]
    lossy = [cr for cr in PAPER_CRS if cr != 1.0]
    start, cpu = time.perf_counter(), time.process_time()
    encoded = encode_ladder(pixels, DETECTORS[vendor].bits_stored, lossy)
    encode_wall, encode_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    for item in encoded:
        decode(item.codestream)
    decode_wall, decode_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"CR ladder, one {vendor} view ({pixels.shape[1]} x {pixels.shape[0]}, {len(lossy)} CRs): "
          f"encode {encode_cpu:.2f} s + decodes {decode_cpu:.2f} s = {encode_cpu + decode_cpu:.2f} "
          f"CPU s (wall {encode_wall + decode_wall:.2f} s); a pair is twice that", flush=True)


def run(name: str, spec: DetectabilitySpec, out: Path, workers: int, target: float) -> None:
    cpu, start = _cpu(), time.perf_counter()
    results = run_detectability(spec, out, workers=workers)
    wall, cpu = time.perf_counter() - start, _cpu() - cpu
    s = results.meta["seconds"]
    parallel = sum(v for k, v in s.items() if k.endswith("_cpu"))
    serial = max(0.0, wall - s["views"] - s["statistics"])  # planning, figures, tables
    idle = serial + parallel / workers
    views = results.meta["views"]
    print(f"\n{name}: {sum(views.values())} view pairs {views}, {results.rows[0].pairs} pairs per "
          f"class, {len(results.rows)} rows")
    print(f"  wall {wall:.1f} s (target {target:.0f} s), CPU {cpu:.1f} s; idle estimate on "
          f"{workers} cores {idle:.1f} s: {'within' if idle <= target else 'OVER'} the target")
    print(f"  views: render {s['views_render_cpu']:.1f} + CR ladders {s['views_ladder_cpu']:.1f} + "
          f"ROIs and templates {s['views_observers_cpu']:.1f} CPU s "
          f"(wall {s['views']:.1f} s); planning {s['plan']:.1f} s")
    for observer in spec.observers:
        print(f"  statistics of {observer.value:<8} {s[f'statistics_{observer.value}_cpu']:6.1f} CPU s")
    print(f"  statistics in all: wall {s['statistics']:.1f} s; figures and tables "
          f"{max(0.0, wall - s['plan'] - s['views'] - s['statistics']):.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick-only", action="store_true")
    parser.add_argument("--out", type=Path, help="keep the full run's results here (a fresh folder)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(above 0 the machine is shared: read the CPU seconds)", flush=True)
    for vendor in DETECTORS:
        ladder(vendor)
    with tempfile.TemporaryDirectory() as folder:
        run("quick", DetectabilitySpec(quick=True), Path(folder) / "quick", args.workers, 60)
        if not args.quick_only:
            out = args.out or Path(folder) / "full"
            run("full", DetectabilitySpec(), out, args.workers, 15 * 60)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
