"""Benchmark the CV matrix's executors: wall time of a small `cv --cross` with the local executor
and with the Ray executor on this machine (the ratio is Ray's cost, target <= 1.15), and cells
per minute on a GPU where there is one.

    .venv/bin/python bench/cv.py [--studies 40] [--folds 3] [--epochs 20] [--input-size 256]

The cohort is a small phantom (GE, `--studies`), CRs 1 and 20 with --cross: 2 models x `--folds`
cells. Its inputs are preprocessed once before timing, so each figure is the cells alone, from
`run_cv` called to its tables written, into a fresh results folder. Timed: the local executor
(one cell after another, torch's threads: every core); a Ray cluster of this machine's cores
started by `ray.init` (its start timed apart), then the Ray executor with one CPU per cell (cells
side by side) and with every core per cell (one at a time, the local executor's threads: Ray's
own overhead). Ray's figures include the start of its worker processes (they import torch). On a
GPU: the same matrix, local and one cell per GPU under Ray, in cells per minute. Not a test: it
prints figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from dicomcr.data.dataset import read_phantom_labels
from dicomcr.data.preprocess import Preprocessing
from dicomcr.experiments.executors import LocalExecutor, RayExecutor
from dicomcr.experiments.run import preprocess, run_cv
from dicomcr.experiments.train import TrainOptions
from dicomcr.phantom import CohortSpec, write_cohort


def _timed(label: str, breasts: list, folder: Path, cache: Path, args: argparse.Namespace,
           executor, device: str = "cpu") -> float:
    out = folder / label.replace(" ", "-")
    start = time.perf_counter()
    run = run_cv(breasts, [1.0, 20.0], out, cache, folds=args.folds, cross=True,
                 options=TrainOptions(epochs=args.epochs, batch_size=8, seed=1, device=device,
                                      patience=args.epochs),
                 preprocessing=Preprocessing(input_size=(args.input_size, args.input_size)),
                 executor=executor)
    seconds = time.perf_counter() - start
    cells = len(run.results)
    print(f"{label:<38} {seconds:7.1f} s  {cells} cells  {cells / seconds * 60:6.1f} cells/min",
          flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--input-size", type=int, default=256)
    args = parser.parse_args()
    try:
        import ray
    except ImportError:  # a GPU machine without the cluster extra still times the local executor
        ray = None
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-cv-") as tmp:
        folder = Path(tmp)
        write_cohort(CohortSpec(n_studies=args.studies, seed=5, size="small", vendor="ge"),
                     folder / "cohort")
        breasts = read_phantom_labels(folder / "cohort")
        cache = folder / "cache"
        preprocess(breasts, [1.0, 20.0], Preprocessing(input_size=(args.input_size,) * 2), cache,
                   workers=cores)
        print(f"{args.studies} studies, CR 1 and 20 --cross, {args.folds} folds, {args.epochs} "
              f"epochs at {args.input_size} x {args.input_size}; {cores} cores, torch "
              f"{torch.get_num_threads()} threads", flush=True)
        local = _timed("local executor", breasts, folder, cache, args, LocalExecutor())
        if ray is not None:
            start = time.perf_counter()
            ray.init(num_cpus=cores, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                     log_to_driver=False)
            print(f"{'ray.init (a cluster of this machine)':<38} "
                  f"{time.perf_counter() - start:7.1f} s")
            side = _timed("ray executor, 1 CPU per cell", breasts, folder, cache, args,
                          RayExecutor(cpus_per_cell=1))
            alone = _timed(f"ray executor, {cores} CPUs per cell", breasts, folder, cache, args,
                           RayExecutor(cpus_per_cell=cores))
            print(f"ratio ray / local: {side / local:.2f}x with 1 CPU per cell, "
                  f"{alone / local:.2f}x with {cores} (target <= 1.15x)")
        else:
            print("Ray is not installed here (the cluster extra): only the local executor timed")
        if torch.cuda.is_available():
            gpu_local = _timed("local executor, CUDA", breasts, folder, cache, args,
                               LocalExecutor(), device="cuda")
            if ray is not None:
                gpus = torch.cuda.device_count()
                gpu_ray = _timed(f"ray executor, 1 GPU per cell ({gpus} GPUs)", breasts, folder,
                                 cache, args, RayExecutor(cpus_per_cell=1), device="auto")
                print(f"GPU ratio ray / local: {gpu_ray / gpu_local:.2f}x")
        else:
            print("no GPU here: cells per minute on a GPU not measured")
        if ray is not None:
            ray.shutdown()


if __name__ == "__main__":
    main()
