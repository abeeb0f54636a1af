"""Training a classifier on preprocessed inputs: Adam, BCE, early stopping on validation AUROC.

A pure function of its inputs, spec, options and seed: the same inputs give the same weights on
the CPU. Inputs stay memory-mapped (`Samples`); each batch is read and converted on a
background thread while the previous one trains. Channels-last memory on every device (measured
on the CPU: README, "Experiments"), mixed precision on CUDA.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from ..models import pick_device
from .metrics import youden_threshold


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation choices (the paper names Adam with beta 0.9/0.999, eps 1e-8, and BCE)."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 3e-4  # chosen among 1e-3, 3e-4 and 1e-4 (README, "Experiments")
    patience: int = 8  # epochs without a better validation AUROC before stopping
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or not self.learning_rate > 0:
            raise ValueError("epochs >= 1, batch_size >= 2 and learning_rate > 0 are required")
        pick_device("cpu" if self.device == "cuda" else self.device)  # the name is checked


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    best_validation_auroc: float
    history: list[dict]


@dataclass(frozen=True, eq=False)
class Samples:
    """Inputs to train or test on: sample i is row `rows[i]` of `inputs[crs[i]]` (a CR mixture
    when the CRs differ). The arrays stay where they are (memory-mapped); `take` reads a batch."""

    inputs: Mapping[float, np.ndarray]
    crs: np.ndarray
    rows: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, inputs: Mapping[float, np.ndarray], labels: np.ndarray, rows: np.ndarray,
           crs: list[float]) -> Samples:
        """The breasts `rows` at every CR of `crs`, one CR after the other, with their labels."""
        rows = np.asarray(rows, dtype=int)
        return cls(inputs, np.repeat(np.asarray(crs, dtype=float), len(rows)),
                   np.tile(rows, len(crs)), np.tile(np.asarray(labels)[rows], len(crs)))

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray) -> np.ndarray:
        """float32 (len(index), rows, columns): the samples `index`, read in row order per CR."""
        index = np.asarray(index, dtype=int)
        first = self.inputs[float(self.crs[index[0]])] if len(index) else None
        out = np.empty((len(index), *first.shape[1:]) if first is not None else (0,),
                       dtype=np.float32)
        for cr in np.unique(self.crs[index]):
            where = np.flatnonzero(self.crs[index] == cr)
            rows = self.rows[index[where]]
            order = np.argsort(rows, kind="stable")  # sequential reads of the mapped file
            out[where[order]] = self.inputs[float(cr)][rows[order]]
        return out


def _batches(samples: Samples, chunks: list[np.ndarray], device: torch.device
             ) -> Iterator[torch.Tensor]:
    """The batches `chunks` of `samples` on `device` (channels-last), each read on a background
    thread while the one before it is in use."""
    def load(index: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(samples.take(index))[:, None]
        x = x.contiguous(memory_format=torch.channels_last)
        return x.pin_memory() if device.type == "cuda" else x

    with ThreadPoolExecutor(1, thread_name_prefix="dicomcr-loader") as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            x = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(load, chunks[k + 1])
            yield x.to(device, non_blocking=True)


def predict(model: nn.Module, samples: Samples | np.ndarray, device: torch.device,
            batch: int = 32) -> np.ndarray:
    """Malignancy probabilities of `samples` (or of an array of inputs (n, rows, columns))."""
    if not isinstance(samples, Samples):
        samples = Samples({1.0: samples}, np.ones(len(samples)), np.arange(len(samples)),
                          np.zeros(len(samples)))
    model.to(device, memory_format=torch.channels_last).eval()
    chunks = [np.arange(s, min(s + batch, len(samples))) for s in range(0, len(samples), batch)]
    out = []
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for x in _batches(samples, chunks, device):
            out.append(torch.sigmoid(model(x)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def operating_threshold(model: nn.Module, validation: Samples) -> tuple[float, str]:
    """(threshold, how it was chosen): Youden's J on the validation samples (both classes are
    there: `train_model` refuses a validation without them)."""
    scores = predict(model, validation, torch.device("cpu"))
    return youden_threshold(validation.labels, scores), "Youden's J on validation"


class BestEpoch:
    """Early stopping on validation AUROC: keeps the weights of the best epoch so far and says
    when `patience` epochs have passed without a better one (shared by the single-process and
    the distributed training)."""

    def __init__(self, model: nn.Module, patience: int) -> None:
        self.auroc, self.epoch, self.patience = -1.0, 0, patience
        self.state = copy.deepcopy(model.state_dict())

    def stop_after(self, epoch: int, auroc: float, model: nn.Module) -> bool:
        """Record `epoch`'s validation AUROC; True when training should stop."""
        if auroc > self.auroc:
            self.auroc, self.epoch, self.state = auroc, epoch, copy.deepcopy(model.state_dict())
            return False
        return epoch - self.epoch >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into `model`, in evaluation mode."""
        model.load_state_dict(self.state)
        model.eval()


def check_classes(train: Samples, validation: Samples) -> None:
    """ValueError unless the training and the validation breasts both hold both classes."""
    for name, side in (("training", train), ("validation", validation)):
        if len(np.unique(side.labels)) < 2:
            raise ValueError(f"the {name} breasts need both classes (malignant and not); they "
                             f"hold {len(side)} input(s), {int(side.labels.sum())} malignant")


@dataclass
class Optimisation:
    """The paper's optimisation of one network: Adam, BCE weighted for the unbalanced classes,
    mixed precision on CUDA (shared by the single-process and the distributed training)."""

    optimiser: torch.optim.Optimizer
    loss: nn.Module
    scaler: torch.amp.GradScaler

    @classmethod
    def of(cls, network: nn.Module, train: Samples, options: TrainOptions,
           device: torch.device) -> Optimisation:
        optimiser = torch.optim.Adam(network.parameters(), lr=options.learning_rate,
                                     betas=(0.9, 0.999), eps=1e-8)
        positives = float(train.labels.mean())
        weight = torch.tensor((1 - positives) / max(positives, 1e-6), device=device)
        return cls(optimiser, torch.nn.BCEWithLogitsLoss(pos_weight=weight),  # unbalanced
                   torch.amp.GradScaler("cuda", enabled=device.type == "cuda"))

    def epoch(self, network: nn.Module, train: Samples, chunks: list[np.ndarray],
              device: torch.device) -> tuple[float, int]:
        """One pass over the batches `chunks` of `train`; (summed loss, samples seen)."""
        total, seen = 0.0, 0
        network.train()
        for index, x in zip(chunks, _batches(train, chunks, device), strict=True):
            y = torch.from_numpy(train.labels[index]).float().to(device)
            self.optimiser.zero_grad()
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                loss = self.loss(network(x), y)
            self.scaler.scale(loss).backward()  # under DDP the ranks' gradients are averaged
            self.scaler.step(self.optimiser)
            self.scaler.update()
            total, seen = total + float(loss.detach()) * len(index), seen + len(index)
        return total, seen


def epoch_batches(order: np.ndarray, batch_size: int, rank: int = 0, size: int = 1
                  ) -> list[np.ndarray]:
    """The batches of one epoch in the shuffled `order`, each process's share of each (every
    size-th sample from its rank); a batch too small for BatchNorm's two samples per process is
    left out."""
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    return [c[rank::size] for c in chunks if len(c) >= 2 * size]


def train_model(build: Callable[[], nn.Module], train: Samples, validation: Samples,
                options: TrainOptions, progress: Callable[[dict], None] | None = None
                ) -> TrainResult:
    """Train the network `build()` makes; keep the weights of the best validation AUROC's epoch."""
    check_classes(train, validation)
    device = pick_device(options.device)
    torch.manual_seed(options.seed)
    np_rng = np.random.default_rng(options.seed)
    model = build().to(device, memory_format=torch.channels_last)
    optimisation = Optimisation.of(model, train, options, device)
    best = BestEpoch(model, options.patience)
    history = []
    for epoch in range(1, options.epochs + 1):
        order = np_rng.permutation(len(train))
        total, _ = optimisation.epoch(model, train, epoch_batches(order, options.batch_size),
                                      device)
        scores = predict(model, validation, device)
        auroc = float(roc_auc_score(validation.labels, scores))
        record = {"epoch": epoch, "loss": total / len(order), "val_auroc": auroc}
        history.append(record)
        if progress:
            progress(record)
        if best.stop_after(epoch, auroc, model):
            break
    best.restore(model)
    return TrainResult(model.cpu(), best.epoch, best.auroc, history)
