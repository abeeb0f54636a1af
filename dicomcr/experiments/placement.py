"""Where the cells of a cv run are computed, as the user chose it: checked before any work
(`ExecutorChoice`) and opened when the cells are due (`executors.LocalExecutor` or
`executors.RayExecutor`). Light to import: the command line offers `Executor` as it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .executors import LocalExecutor, RayExecutor


class Executor(StrEnum):
    """Where the cells run: here, one after another, or as Ray tasks."""

    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class ExecutorChoice:
    """The executor a run asked for: `kind`, the Ray cluster's `address` (Ray only), and
    `cpus_per_cell`, the torch threads of a cell (None: every core locally, one CPU per Ray
    task). ValueError at once for a choice that cannot be honoured."""

    kind: Executor = Executor.LOCAL
    address: str | None = None
    cpus_per_cell: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and self.kind is not Executor.RAY:
            raise ValueError("--address is for --executor ray")
        if self.cpus_per_cell is not None and self.cpus_per_cell < 1:
            raise ValueError(f"CPUs per cell must be >= 1, got {self.cpus_per_cell}")

    def open(self) -> LocalExecutor | RayExecutor:
        """The executor, ready (a Ray cluster joined or started); close it, or use `with`.
        RayUnavailable when Ray is not installed or its cluster cannot be reached."""
        from .executors import LocalExecutor, RayExecutor

        if self.kind is Executor.RAY:
            return RayExecutor(self.address, self.cpus_per_cell or 1)
        return LocalExecutor(self.cpus_per_cell)
