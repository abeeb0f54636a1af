"""One training on several processes: torch DistributedDataParallel under torchrun.

torchrun (`python -m torch.distributed.run`) starts the processes and sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each; `World.from_env` reads them, and
`train_classifier` trains with DDP whenever WORLD_SIZE > 1: gloo on the CPU, NCCL on CUDA (one
GPU per process, `cuda:LOCAL_RANK`). Every rank draws the same shuffled order of the training
samples from the seed and takes its share of each batch (the batch size stays the global one);
DDP averages the gradients; after each epoch rank 0's BatchNorm statistics are broadcast, so
every rank holds the same network. Validation and test scores are computed on shares of the
samples and gathered, so the validation AUROC, the early stopping and the operating threshold
(computed once, on rank 0, and broadcast) are the same on every rank. Rank 0 alone writes the
model file.

`launch` runs torchrun on this machine with `nproc` processes and the hidden worker entry
`dicomcr.experiments.ddp_worker` (what `dicomcr train --nproc N` does); across machines,
torchrun is started on each with the same rendezvous (README, "Experiments").
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..models import pick_device
from .metrics import youden_threshold
from .train import (
    BestEpoch,
    Optimisation,
    Samples,
    TrainOptions,
    TrainResult,
    check_classes,
    epoch_batches,
    predict,
)


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's: its rank, how many there are, its rank on this
    machine."""

    rank: int
    size: int
    local_rank: int

    @classmethod
    def from_env(cls) -> World | None:
        """The world torchrun set up, or None outside torchrun (or with one process)."""
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if size <= 1 or "RANK" not in os.environ:
            return None
        return cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, options: TrainOptions) -> torch.device:
        """cuda:LOCAL_RANK when the options pick CUDA, else the CPU."""
        if pick_device(options.device).type == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def start(self, options: TrainOptions) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on the CPU); return this rank's device."""
        device = self.device(options)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def barrier(self) -> None:
        dist.barrier()

    def stop(self) -> None:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def reports() -> bool:
    """Whether this process reports a training to the user: outside torchrun, or rank 0."""
    world = World.from_env()
    return world is None or world.leader


def _share(samples: Samples, world: World) -> tuple[np.ndarray, Samples]:
    """(indices, samples) of this rank's share: every size-th sample from its rank."""
    index = np.arange(world.rank, len(samples), world.size)
    return index, Samples(samples.inputs, samples.crs[index], samples.rows[index],
                          samples.labels[index])


def predict_shared(model: nn.Module, samples: Samples, world: World,
                   device: torch.device) -> np.ndarray:
    """`predict` over every rank: each scores its share, the shares are gathered in order, and
    every rank gets the same array."""
    index, mine = _share(samples, world)
    scores = predict(model, mine, device) if len(mine) else np.zeros(0, dtype=np.float32)
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, (index, scores))
    out = np.zeros(len(samples), dtype=np.float32)
    for where, values in gathered:
        out[where] = values
    return out


def agreed(value: object, world: World) -> object:
    """Rank 0's `value`, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def operating_threshold_shared(model: nn.Module, validation: Samples, world: World,
                               device: torch.device) -> tuple[float, str]:
    """Youden's J on the gathered validation scores, rank 0's choice broadcast to all."""
    scores = predict_shared(model, validation, world, device)
    return agreed((youden_threshold(validation.labels, scores), "Youden's J on validation"),
                  world)  # type: ignore[return-value]


def train_model_distributed(build: Callable[[], nn.Module], train: Samples, validation: Samples,
                            options: TrainOptions, world: World,
                            progress: Callable[[dict], None] | None = None) -> TrainResult:
    """`train.train_model` with DDP over `world`: the same options, the global batch split among
    the ranks, the same best epoch and early stop on every rank."""
    check_classes(train, validation)
    if options.batch_size < 2 * world.size:
        raise ValueError(f"--batch-size {options.batch_size} cannot be shared by {world.size} "
                         f"processes (BatchNorm needs two samples on each): at least "
                         f"{2 * world.size}")
    device = world.start(options)
    torch.manual_seed(options.seed)
    np_rng = np.random.default_rng(options.seed)
    model = build().to(device, memory_format=torch.channels_last)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None)
    optimisation = Optimisation.of(ddp, train, options, device)
    best = BestEpoch(model, options.patience)
    history = []
    for epoch in range(1, options.epochs + 1):
        order = np_rng.permutation(len(train))  # the same on every rank: same seed
        chunks = epoch_batches(order, options.batch_size, world.rank, world.size)
        total = torch.tensor(optimisation.epoch(ddp, train, chunks, device), dtype=torch.float64,
                             device=device)  # (summed loss, samples) of this rank
        dist.all_reduce(total)
        for buffer in model.buffers():  # BatchNorm statistics: rank 0's everywhere
            dist.broadcast(buffer, src=0)
        scores = predict_shared(model, validation, world, device)
        auroc = float(roc_auc_score(validation.labels, scores))
        record = {"epoch": epoch, "loss": float(total[0] / max(float(total[1]), 1.0)),
                  "val_auroc": auroc}
        history.append(record)
        if progress and world.leader:
            progress(record)
        if best.stop_after(epoch, auroc, model):
            break
    best.restore(model)
    return TrainResult(model, best.epoch, best.auroc, history)


@dataclass(frozen=True)
class TrainRequest:
    """What `dicomcr train` asks of `train_classifier`, handed to the torchrun workers."""

    breasts: list
    crs: list[float]
    out: Path
    cache: Path
    network: object
    options: TrainOptions
    preprocessing: object
    workers: int = 1


def launch(request: TrainRequest, nproc: int, echo: Callable[[str], None] | None = None):
    """Train `request` on `nproc` processes of this machine under torchrun (--standalone: a
    rendezvous on a free local port); return rank 0's `TrainedModel`. ValueError with the
    workers' reason when they fail."""
    if nproc < 2:
        raise ValueError(f"--nproc must be at least 2 (1: train without it), got {nproc}")
    with tempfile.TemporaryDirectory(prefix="dicomcr-ddp-") as folder:
        asked, answer = Path(folder) / "request.pickle", Path(folder) / "result.pickle"
        asked.write_bytes(pickle.dumps(request))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nnodes", "1", "--nproc-per-node", str(nproc),
                   "-m", "dicomcr.experiments.ddp_worker", str(asked), str(answer)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
        run = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        if echo:
            for line in run.stdout.splitlines():
                if line.startswith("dicomcr-ddp: "):
                    echo(line.removeprefix("dicomcr-ddp: "))
        outcome = pickle.loads(answer.read_bytes()) if answer.is_file() else None
        if isinstance(outcome, str):
            raise ValueError(outcome)
        if run.returncode != 0 or outcome is None:
            tail = "\n".join(run.stdout.splitlines()[-15:])
            raise ValueError(f"torchrun with {nproc} processes failed (exit {run.returncode}):"
                             f"\n{tail}")
        return outcome
