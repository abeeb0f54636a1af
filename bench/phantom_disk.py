"""Benchmark: the peak disk of a cv run on a phantom cohort, stored on disk versus streamed.

    nice -n 5 .venv/bin/python bench/phantom_disk.py [--studies 100] [--cr 1 --cr 11000]
        [--size full] [--folds 5] [--epochs 1] [--workers 2] [--dir DIR] [--keep]

Both runs are the commands a user types, one after the other, each in its own folder under DIR
(default: a temporary folder), with the same spec, seed and options:
  stored:   dicomcr phantom DIR/stored/cohort ...; dicomcr cv DIR/stored/cohort ... (its cache in
            the cohort's folder, as by default)
  streamed: dicomcr cv phantom:studies=N,seed=S,size=... --cache DIR/streamed/cache ...
A thread samples the disk each run's folder takes (allocated blocks of every file, every
`--interval` seconds) from its first command's start to its last command's end; the peak of each,
their ratio, what the stored run's DICOM and cache took, and whether the two results.csv are
identical are printed. The disk of a run is dominated by the cohort and the cache; the number of
epochs changes only the time, the number of folds the count of fold model files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def disk_bytes(root: Path) -> int:
    """Bytes allocated to every file under `root` (st_blocks: what the disk really holds)."""
    total, stack = 0, [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # a folder removed while being read (a partial file renamed, ...)
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


class PeakDisk:
    """The largest `disk_bytes(root)` seen while the block runs, sampled every `interval` s."""

    def __init__(self, root: Path, interval: float) -> None:
        self.root, self.interval, self.peak = root, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, disk_bytes(self.root))
            if self._stop.wait(self.interval):
                self.peak = max(self.peak, disk_bytes(self.root))
                return

    def __enter__(self) -> PeakDisk:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(command: list[str], log: Path) -> float:
    """Run one dicomcr command (output to `log`); its seconds, or exit with its log's tail."""
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        done = subprocess.run([sys.executable, "-m", "dicomcr", *command], stdout=handle,
                              stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n"
                 + "".join(log.read_text().splitlines(keepends=True)[-20:]))
    return time.perf_counter() - start


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--size", default="full")
    parser.add_argument("--cr", action="append", help="CRs of the run (default 1 and 11000)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--dir", type=Path, help="where both runs write (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep both runs' folders")
    args = parser.parse_args()
    crs = args.cr or ["1", "11000"]
    root = Path(args.dir or tempfile.mkdtemp(prefix="dicomcr-disk-"))
    spec = f"phantom:studies={args.studies},seed={args.seed},size={args.size}"
    options = [arg for cr in crs for arg in ("--cr", cr)] + [
        "--folds", str(args.folds), "--epochs", str(args.epochs), "--workers", str(args.workers)]
    runs = {
        "stored": [["phantom", "{r}/cohort", "--studies", str(args.studies), "--seed",
                    str(args.seed), "--size", args.size, "--workers", str(args.workers)],
                   ["cv", "{r}/cohort", *options, "--out", "{r}/results"]],
        "streamed": [["cv", spec, *options, "--cache", "{r}/cache", "--out", "{r}/results"]],
    }
    print(f"{args.studies} studies ({args.size}), CR {', '.join(crs)}, {args.folds} folds, "
          f"{args.epochs} epoch(s), {args.workers} workers, in {root}", flush=True)
    measured = {}
    for name, commands in runs.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        with PeakDisk(folder, args.interval) as peak:
            seconds = sum(run([a.replace("{r}", str(folder)) for a in c], folder / "log.txt")
                          for c in commands)
        measured[name] = (peak.peak, disk_bytes(folder), seconds)
        print(f"{name:9} peak {gib(peak.peak)}, at the end {gib(disk_bytes(folder))}, "
              f"{seconds:.0f} s", flush=True)
    stored, streamed = root / "stored", root / "streamed"
    dicom, cache = disk_bytes(stored / "cohort" / "dicom"), disk_bytes(stored / "cohort" / ".dicomcr-cache")
    home = next((streamed / "cache").glob("phantom-*"))
    same = (stored / "results" / "results.csv").read_text() == \
        (streamed / "results" / "results.csv").read_text()
    print(f"\n{'run':9} {'peak disk':>12} {'per study':>10} {'seconds':>8}")
    for name, (peak, _, seconds) in measured.items():
        print(f"{name:9} {gib(peak):>12} {peak / args.studies / 2**20:>7.1f} MiB {seconds:>8.0f}")
    print(f"ratio stored / streamed: {measured['stored'][0] / measured['streamed'][0]:.1f}x")
    print(f"stored: DICOM {gib(dicom)}, cache {gib(cache)}; streamed: cache "
          f"{gib(disk_bytes(streamed / 'cache'))}, of which labels, masks and study records "
          f"{disk_bytes(home) / 2**20:.1f} MiB")
    print(f"results.csv identical: {'yes' if same else 'NO'}")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
