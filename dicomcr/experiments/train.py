"""Training a classifier on preprocessed inputs: Adam, BCE, early stopping on validation AUROC.

A pure function of its arrays, spec, options and seed: the same inputs give the same weights on
the CPU. Mixed precision on CUDA.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn


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
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked, but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    best_validation_auroc: float
    history: list[dict]


def predict(model: nn.Module, x: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    """Malignancy probabilities for inputs (n, rows, columns)."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            chunk = torch.from_numpy(x[start:start + batch]).float()[:, None].to(device)
            out.append(torch.sigmoid(model(chunk)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def stack_crs(inputs: dict[float, np.ndarray], labels: np.ndarray, rows: np.ndarray,
              crs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of `rows` at every CR of `crs`, one after the other (a CR mixture), and labels."""
    return (np.concatenate([inputs[c][rows] for c in crs]),
            np.concatenate([labels[rows]] * len(crs)))


def train_model(build: Callable[[], nn.Module], train_x: np.ndarray, train_y: np.ndarray,
                val_x: np.ndarray, val_y: np.ndarray, options: TrainOptions,
                progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Train the network `build()` makes; keep the weights of the best validation AUROC's epoch."""
    if len(train_x) < 2 or len(np.unique(train_y)) < 2:
        raise ValueError("training needs both classes among at least two inputs")
    device = pick_device(options.device)
    torch.manual_seed(options.seed)
    np_rng = np.random.default_rng(options.seed)
    model = build().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=options.learning_rate,
                                 betas=(0.9, 0.999), eps=1e-8)
    positives = float(train_y.mean())
    weight = torch.tensor((1 - positives) / max(positives, 1e-6), device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=weight)  # the classes are unbalanced
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history = []
    for epoch in range(1, options.epochs + 1):
        model.train()
        order = np_rng.permutation(len(train_x))
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            index = order[start:start + options.batch_size]
            if len(index) < 2:  # BatchNorm needs two samples
                continue
            x = torch.from_numpy(train_x[index]).float()[:, None].to(device)
            y = torch.from_numpy(train_y[index]).float().to(device)
            optimiser.zero_grad()
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            total += float(loss.detach()) * len(index)
        scores = predict(model, val_x, device)
        auroc = (float(roc_auc_score(val_y, scores)) if len(np.unique(val_y)) == 2
                 else float("nan"))
        record = {"epoch": epoch, "loss": total / len(order), "val_auroc": auroc}
        history.append(record)
        if progress:
            progress(record)
        if np.isnan(auroc) or auroc > best[0]:
            best = (auroc if not np.isnan(auroc) else best[0], epoch,
                    copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= options.patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    best_auroc = best[0] if best[0] >= 0 else float("nan")  # nan: validation lacks a class
    return TrainResult(model.cpu(), best[1], best_auroc, history)
