"""The cells of the CV matrix: one model (`ModelPlan`) on one fold (`Fold`), what a cell needs
(`Cell`, `CellWork`) and what it produces (`FoldResult`, `CellDone`).

`cv` decides which cells to compute and pools their results; `executors` computes them here or on
a Ray cluster. Both import these types from here, and neither imports the other's consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .train import Samples, TrainOptions, operating_threshold, predict, train_model


@dataclass(frozen=True)
class Fold:
    """The patients of one fold: test is this fold's share, validation comes from the rest."""

    index: int
    train: frozenset[str]
    validation: frozenset[str]
    test: frozenset[str]


@dataclass(frozen=True)
class ModelPlan:
    """One model of an experiment: its name, the CRs it trains on and the CRs it is tested at."""

    name: str
    train_crs: tuple[float, ...]
    test_crs: tuple[float, ...]


@dataclass(frozen=True)
class FoldResult:
    """What one fold of one model produced: test probabilities per CR and how training went."""

    model: str
    fold: int
    keys: tuple[str, ...]  # breast keys of the test patients
    labels: tuple[int, ...]
    probabilities: dict[str, list[float]]  # test CR (as text) -> one per key
    best_epoch: int
    validation_auroc: float
    threshold: float  # the operating point chosen on the fold's validation patients
    threshold_rule: str  # how (Youden's J, or 0.5 and why)
    history: list[dict]
    identity: str  # what the result depends on; a changed identity is recomputed


def run_fold(plan: ModelPlan, fold: Fold, keys: list[str], patient_of: list[str],
             inputs: dict[float, np.ndarray], labels: np.ndarray, build: Callable[[], nn.Module],
             options: TrainOptions, identity: str,
             progress: Callable[[dict], None] | None = None) -> tuple[FoldResult, nn.Module]:
    """Train `plan` on the fold's training patients, choose its operating threshold on the
    validation patients, test it on the test patients at every CR; return the result and the
    trained network."""
    def rows(patients: frozenset[str]) -> np.ndarray:
        return np.array([i for i, p in enumerate(patient_of) if p in patients], dtype=int)

    train = Samples.of(inputs, labels, rows(fold.train), list(plan.train_crs))
    validation = Samples.of(inputs, labels, rows(fold.validation), list(plan.train_crs))
    result = train_model(build, train, validation, options, progress)
    threshold, rule = operating_threshold(result.model, validation)
    test = rows(fold.test)
    device = torch.device("cpu")
    probabilities = {f"{c:g}": [float(v) for v in
                                predict(result.model, Samples.of(inputs, labels, test, [c]), device)]
                     for c in plan.test_crs}
    return FoldResult(plan.name, fold.index, tuple(keys[i] for i in test),
                      tuple(int(labels[i]) for i in test), probabilities, result.best_epoch,
                      result.best_validation_auroc, threshold, rule, result.history,
                      identity), result.model


@dataclass(frozen=True)
class Cell:
    """One model on one fold, with the identity its result file carries and its own options (the
    seed is the run's plus the fold's index)."""

    plan: ModelPlan
    fold: Fold
    identity: str
    options: TrainOptions

    @classmethod
    def of(cls, plan: ModelPlan, fold: Fold, identity: str, options: TrainOptions) -> Cell:
        return cls(plan, fold, identity,
                   TrainOptions(**{**asdict(options), "seed": options.seed + fold.index}))


@dataclass(frozen=True, eq=False)
class CellWork:
    """What every cell of a run shares: the breasts (keys, patients, labels), their inputs per CR
    and how to build the network."""

    keys: tuple[str, ...]
    patient_of: tuple[str, ...]
    inputs: Mapping[float, np.ndarray]
    labels: np.ndarray
    build: Callable[[], nn.Module]


@dataclass(frozen=True, eq=False)
class CellDone:
    """A cell computed: its result (not yet saved) and the trained network."""

    cell: Cell
    result: FoldResult
    network: nn.Module


@dataclass(frozen=True)
class CellEvents:
    """Progress of the cells: `started(cell)` before a cell trains (with Ray: when its result
    arrives, the task's start is not seen here), `epoch(record)` after each epoch of the cell
    training in this process (Ray tasks report none)."""

    started: Callable[[Cell], None] | None = None
    epoch: Callable[[dict], None] | None = None


def train_cell(cell: Cell, work: CellWork,
               epoch: Callable[[dict], None] | None = None) -> tuple[FoldResult, nn.Module]:
    """One cell: train, choose the threshold, test (`run_fold`)."""
    return run_fold(cell.plan, cell.fold, list(work.keys), list(work.patient_of), dict(work.inputs),
                    work.labels, work.build, cell.options, cell.identity, epoch)
