"""Does a training on two processes (DDP, `dicomcr train --nproc 2`) learn as well as one?

    .venv/bin/python bench/ddp.py [--studies 800] [--seeds 5] [--epochs 20] [--cohort DIR]

Trains CNN3 at CR 1 once in one process and once on two (torchrun, gloo, one CPU thread each)
for each seed, on the same 7:1:2 split, and prints both test AUROCs, their difference, and the
mean difference over the seeds with its 95 % t-interval; also the wall time of each. The two are
not the same computation: on two processes each BatchNorm layer normalises over its half of the
batch (PyTorch's SyncBatchNorm runs on GPUs only) and the dropout masks are drawn per process,
so single runs differ as two seeds would; what is compared is how well they learn, over seeds.

The cohort must be one CNN3 learns from at all, else both sides are at chance and the
difference measures nothing: small GE phantom studies with `conspicuous` lesions, a third of
the studies malignant (the suite's DDP test uses 30 such studies and does not compare AUROCs).
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from scipy import stats

from dicomcr.data.dataset import read_phantom_labels
from dicomcr.data.preprocess import Preprocessing
from dicomcr.experiments.distributed import TrainRequest, launch
from dicomcr.experiments.run import Network, TrainedModel, train_classifier
from dicomcr.experiments.train import TrainOptions
from dicomcr.phantom import CohortMix, CohortSpec, Difficulty, write_cohort


def _auroc(trained: TrainedModel) -> float:
    """The model's test AUROC at CR 1; stop, saying why, when there is none."""
    estimate = trained.test[1.0]
    if isinstance(estimate, str):
        raise SystemExit(f"no test AUROC: {estimate}")
    return estimate.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=800)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cohort", type=Path, help="reuse (or write) the cohort here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        cohort = args.cohort or Path(tmp) / "cohort"
        if not (cohort / "labels.csv").is_file():
            start = time.perf_counter()
            write_cohort(CohortSpec(n_studies=args.studies, seed=3, size="small", vendor="ge",
                                    difficulty=Difficulty.named("conspicuous"),
                                    mix=CohortMix(0.5, 0.17, 0.33)), cohort)
            print(f"cohort: {args.studies} small GE studies, conspicuous lesions, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        breasts = read_phantom_labels(cohort)
        cache = cohort / ".dicomcr-cache"
        print(f"{len(breasts)} breasts ({sum(b.malignant for b in breasts)} malignant); CNN3 at "
              f"CR 1, the paper's pitch, {args.epochs} epochs at most", flush=True)
        print(f"{'seed':>4} {'1 process':>10} {'2 (DDP)':>10} {'2 - 1':>7} "
              f"{'time 1':>8} {'time 2':>8}", flush=True)
        differences = []
        for seed in range(1, args.seeds + 1):
            options = TrainOptions(epochs=args.epochs, batch_size=16, seed=seed, device="cpu")
            out = Path(tmp) / f"seed{seed}"
            start = time.perf_counter()
            one = _auroc(train_classifier(breasts, [1.0], out / "one.dcmcr", cache,
                                          options=options, workers=2))
            single = time.perf_counter() - start
            start = time.perf_counter()
            request = TrainRequest(breasts, [1.0], out / "two.dcmcr", cache, Network(), options,
                                   Preprocessing(), workers=2)
            two = _auroc(launch(request, 2))
            double = time.perf_counter() - start
            differences.append(two - one)
            print(f"{seed:>4} {one:>10.3f} {two:>10.3f} {two - one:>+7.3f} {single:>7.0f}s "
                  f"{double:>7.0f}s", flush=True)
        mean = statistics.fmean(differences)
        if len(differences) > 1:
            half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) \
                / len(differences) ** 0.5
            print(f"mean difference (2 - 1) over {len(differences)} seeds: {mean:+.3f} "
                  f"(95% CI {mean - half:+.3f} to {mean + half:+.3f}); "
                  f"target: within 0.05")
        else:
            print(f"difference (2 - 1): {mean:+.3f}; target: within 0.05")


if __name__ == "__main__":
    main()
