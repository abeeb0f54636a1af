"""Where the cells of the CV matrix (one model on one fold) run: one after another in this process
(`LocalExecutor`, the default, no Ray needed) or as Ray tasks on a cluster (`RayExecutor`).

An executor only computes: `cv.cross_validate` decides which cells are still to do (a finished
cell's file in `ResultsDir` with the same identity is loaded, whoever wrote it) and writes each
result as it arrives, so the per-cell files and their identities are the same with either
executor, and a run interrupted under one resumes under the other. A cell is a pure function of
its inputs and seed, so a Ray task retried after its worker died (`max_retries`) returns the same
result. Ray is imported here only, and only by `RayExecutor`.

On a cluster the preprocessing cache and the results folder must be on storage every node sees at
the same path: the cache is filled by Ray tasks (a chunk of breasts each), and the cell tasks open
the inputs' array files there, memory-mapped, instead of receiving their bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from torch import nn

from ..data.cache import BreastInputs, breast_inputs, view_crops
from ..data.dataset import Breast
from ..data.preprocess import Preprocessing
from .cells import Cell, CellDone, CellEvents, CellWork, FoldResult, train_cell


class CellExecutor(Protocol):
    """Runs cells and fills the preprocessing cache."""

    def preprocess(self, breasts: list[Breast], crs: list[float], preprocessing: Preprocessing,
                   cache: Path, workers: int,
                   progress: Callable[[int, int], None] | None) -> BreastInputs:
        """The breasts' inputs at every CR, computing what the cache lacks."""
        ...

    def run(self, cells: Sequence[Cell], work: CellWork, events: CellEvents) -> Iterator[CellDone]:
        """Every cell computed, yielded as it finishes (in any order)."""
        ...


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block (None: left as they are)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LocalExecutor:
    """The cells one after another in this process, each with `threads` torch threads (None:
    torch's default, every core); the cache filled by `workers` processes.

    The thread count is the one thing outside a cell's identity that changes its numbers (the
    order of the CPU's parallel sums, in the last bits): the same `threads` here and
    `cpus_per_cell` in `RayExecutor` give bit-identical results."""

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads per cell must be >= 1, got {threads}")
        self.threads = threads

    def preprocess(self, breasts: list[Breast], crs: list[float], preprocessing: Preprocessing,
                   cache: Path, workers: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> BreastInputs:
        return breast_inputs(breasts, crs, preprocessing, cache, workers, progress)

    def run(self, cells: Sequence[Cell], work: CellWork,
            events: CellEvents | None = None) -> Iterator[CellDone]:
        events = events or CellEvents()
        for cell in cells:
            if events.started:
                events.started(cell)
            with _threads(self.threads):
                result, network = train_cell(cell, work, events.epoch)
            yield CellDone(cell, result, network)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayUnavailable(RuntimeError):
    """Ray is not installed (the `cluster` extra) or the cluster cannot be reached."""


@dataclass(frozen=True)
class RayResources:
    """What each cell task asks of the cluster."""

    cpus: float
    gpus: float


def _mapped_paths(inputs: Mapping[float, np.ndarray]) -> dict[float, str] | None:
    """{CR: the array file} when every input is a memory-mapped file, else None."""
    paths = {cr: getattr(a, "filename", None) for cr, a in inputs.items()}
    return paths if all(paths.values()) else None  # type: ignore[return-value]


def _open_mapped(paths: Mapping[float, str]) -> dict[float, np.ndarray]:
    return {cr: np.load(path, mmap_mode="r") for cr, path in paths.items()}


def _remote_cell(cell: Cell, work: CellWork, paths: dict[float, str] | None, threads: int
                 ) -> tuple[FoldResult, nn.Module]:
    """The body of a cell task on a Ray worker: the inputs are opened from the shared cache."""
    if paths is not None:
        work = CellWork(work.keys, work.patient_of, _open_mapped(paths), work.labels, work.build)
    with _threads(threads):
        return train_cell(cell, work)


def _remote_views(breasts: list[Breast], crs: list[float], preprocessing: Preprocessing,
                  cache: str) -> int:
    """The body of a preprocessing task: the crops of `breasts` missing from the cache."""
    view_crops(breasts, crs, preprocessing, Path(cache), 1)
    return 2 * len(breasts)


class RayExecutor:
    """Each cell a Ray task of `cpus_per_cell` CPUs (its torch threads), and one GPU when the
    cluster has GPUs.

    `address`: the cluster to join (`ray start --head` prints it; "auto" finds one on this
    machine); None joins the one `RAY_ADDRESS` names (as under `ray job submit`) or, without it,
    starts a local one with this machine's cores (no dashboard, no usage statistics). An already
    initialised Ray (`ray.init` by the caller) is used as it is. A task whose worker dies is run
    again, up to `max_retries` times; an exception raised by the cell itself is not retried.
    """

    def __init__(self, address: str | None = None, cpus_per_cell: int = 1,
                 max_retries: int = 3, breasts_per_task: int | None = None) -> None:
        if cpus_per_cell < 1:
            raise ValueError(f"CPUs per cell must be >= 1, got {cpus_per_cell}")
        try:
            import ray
        except ImportError as exc:
            raise RayUnavailable("--executor ray needs Ray: pip install 'dicomcr[cluster]' "
                                 "(bash scripts/install.sh test installs it)") from exc
        self._ray = ray
        self.max_retries = max_retries
        self.breasts_per_task = breasts_per_task
        self._owned = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            joining = address is not None or os.environ.get("RAY_ADDRESS")
            try:
                if joining:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayUnavailable(f"cannot join the Ray cluster at {address or 'RAY_ADDRESS'}: "
                                     f"{exc}") from exc
            self._owned = True
        gpus = ray.cluster_resources().get("GPU", 0.0)
        self.cpus_per_cell = cpus_per_cell
        self.resources = RayResources(float(cpus_per_cell), 1.0 if gpus else 0.0)
        self._cell = ray.remote(_remote_cell).options(
            name="dicomcr-cell", num_cpus=self.resources.cpus, num_gpus=self.resources.gpus,
            max_retries=max_retries, retry_exceptions=False)
        self._views = ray.remote(_remote_views).options(
            name="dicomcr-views", num_cpus=1, max_retries=max_retries, retry_exceptions=False)

    def _get(self, ref: object) -> object:
        """ray.get, with a cell's own exception raised as itself (a ValueError stays one)."""
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            raise cause from None

    def preprocess(self, breasts: list[Breast], crs: list[float], preprocessing: Preprocessing,
                   cache: Path, workers: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> BreastInputs:
        """The crops missing from the cache computed by Ray tasks (`cache` on shared storage),
        then the inputs assembled here from the cache."""
        cache = Path(cache).resolve()
        cache.mkdir(parents=True, exist_ok=True)
        cpus = max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        size = self.breasts_per_task or max(1, -(-len(breasts) // (4 * cpus)))
        chunks = [breasts[i:i + size] for i in range(0, len(breasts), size)]
        pending = [self._views.remote(c, list(crs), preprocessing, str(cache)) for c in chunks]
        done = 0
        try:
            while pending:
                ready, pending = self._ray.wait(pending, num_returns=1)
                done += int(self._get(ready[0]))  # type: ignore[arg-type]
                if progress:
                    progress(done, 2 * len(breasts))
        finally:
            for ref in pending:
                self._ray.cancel(ref)
        return breast_inputs(breasts, crs, preprocessing, cache, 1)

    def run(self, cells: Sequence[Cell], work: CellWork,
            events: CellEvents | None = None) -> Iterator[CellDone]:
        events = events or CellEvents()
        if not cells:
            return
        paths = _mapped_paths(work.inputs)
        shared = CellWork(work.keys, work.patient_of, {} if paths else dict(work.inputs),
                          work.labels, work.build)
        shared_ref = self._ray.put(shared)
        of = {self._cell.remote(cell, shared_ref, paths, self.cpus_per_cell): cell
              for cell in cells}
        pending = list(of)
        try:
            while pending:
                ready, pending = self._ray.wait(pending, num_returns=1)
                cell = of[ready[0]]
                result, network = self._get(ready[0])  # type: ignore[misc]
                if events.started:
                    events.started(cell)
                yield CellDone(cell, result, network)
        finally:
            for ref in pending:  # an error or an interrupted run: the other cells stop too
                self._ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
