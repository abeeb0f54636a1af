"""The embedded backend (`queue: local`, the default): process pools on this machine, no server.

Transcoding runs in a pool of `workers` spawned processes, inference in a pool of one; a task's
result comes back through its future. A worker that dies breaks a ProcessPoolExecutor for good:
WorkerPool rebuilds it and every task that was in flight yields WORKER_DIED, so that the node
counts the death in its job store and queues the job again.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from .base import (
    InferenceResult,
    InferenceTask,
    Outcome,
    QueueLine,
    QueueView,
    Result,
    Task,
    TaskKind,
    TranscodeResult,
    TranscodeTask,
    run_inference,
    run_transcode,
)

PR_SET_NAME = 15  # prctl(2)


def _name_process(name: str) -> None:
    """Initializer of a worker process: name it (ps, top, /proc/PID/comm shows `name`) so that an
    operator tells the transcoding workers from the inference process; ignore SIGINT, so that a
    Ctrl-C to the terminal's process group lets the node drain its workers instead of killing
    them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class WorkerPool:
    """Spawned worker processes that outlive a worker's death.

    A ProcessPoolExecutor whose worker dies is broken for good: every future in flight fails with
    BrokenProcessPool, and so does every later submit. This one is rebuilt, once per break (the
    generation tells a failure of the old pool from one of the new) and `on_death` called.
    Spawned, not forked: a forked worker would inherit the listening socket and keep the port
    busy after the node itself was killed."""

    def __init__(self, size: int, name: str, on_death: Callable[[], None] = lambda: None) -> None:
        self.size, self.name, self._on_death = size, name, on_death
        self.generation = 0
        self._lock = threading.Lock()
        self._executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.size, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_name_process, initargs=(self.name,))

    def submit(self, fn: Callable, /, *args: object) -> tuple[Future, int]:
        """Run `fn(*args)` in a worker; the future and the generation it runs in."""
        with self._lock:
            try:
                return self._executor.submit(fn, *args), self.generation
            except BrokenProcessPool:  # broke since our last look: its futures will say so too
                self._rebuild()
                return self._executor.submit(fn, *args), self.generation

    def broken(self, generation: int) -> None:
        """A future of `generation` failed with BrokenProcessPool: rebuild, unless done already."""
        with self._lock:
            if generation == self.generation:
                self._rebuild()

    def _rebuild(self) -> None:
        old, self._executor = self._executor, self._new()
        self.generation += 1
        old.shutdown(wait=False, cancel_futures=True)
        self._on_death()

    def shutdown(self) -> None:
        with self._lock:
            self._executor.shutdown(wait=True)


@dataclass(frozen=True)
class _InFlight:
    task: Task
    future: Future
    generation: int


class LocalQueue:
    """WorkQueue over two local WorkerPools (transcoding, inference)."""

    def __init__(self, workers: int, on_death: Callable[[TaskKind], None] = lambda kind: None
                 ) -> None:
        self._pools = {
            TaskKind.TRANSCODE: WorkerPool(workers, "dicomcr-encode",
                                           lambda: on_death(TaskKind.TRANSCODE)),
            TaskKind.INFER: WorkerPool(1, "dicomcr-infer", lambda: on_death(TaskKind.INFER)),
        }
        self._running: dict[TaskKind, list[_InFlight]] = {kind: [] for kind in TaskKind}
        self._watchers: dict[TaskKind, list[Callable[[], None]]] = {k: [] for k in TaskKind}
        self._lock = threading.Lock()

    waits_on_stop = True  # a stopping node lets its workers finish what they run
    announces = True  # each future calls the watchers when it is done

    def watch(self, kind: TaskKind, callback: Callable[[], None]) -> None:
        self._watchers[kind].append(callback)

    def capacity(self, kind: TaskKind) -> int:
        with self._lock:
            return self._pools[kind].size - len(self._running[kind])

    def submit(self, task: Task) -> None:
        function = run_transcode if isinstance(task, TranscodeTask) else run_inference
        future, generation = self._pools[task.kind].submit(function, task)
        with self._lock:
            self._running[task.kind].append(_InFlight(task, future, generation))
        for callback in self._watchers[task.kind]:
            future.add_done_callback(lambda _, callback=callback: callback())

    def results(self, kind: TaskKind, timeout: float) -> list[Result]:
        with self._lock:
            running = list(self._running[kind])
        if not running:  # nothing can come back: wait as a broker's queue would, then say so
            time.sleep(timeout)
            return []
        wait([item.future for item in running], timeout=timeout, return_when=FIRST_COMPLETED)
        finished = [item for item in running if item.future.done()]
        with self._lock:
            self._running[kind] = [i for i in self._running[kind] if i not in finished]
        out: list[Result] = []
        for item in finished:
            out += self._outcome(item)
        return out

    def _outcome(self, item: _InFlight) -> list[Result]:
        """The results of a finished future; a dead worker's tasks say WORKER_DIED."""
        if item.future.cancelled():  # its pool was replaced before it started
            return _died(item.task, "not started", Outcome.NOT_RUN)
        error = item.future.exception()
        if isinstance(error, BrokenProcessPool):
            self._pools[item.task.kind].broken(item.generation)
            return _died(item.task, "its worker process died")
        if error is not None:  # the unit of work turns errors into results: this is a bug
            return _died(item.task, f"{type(error).__name__}: {error}", Outcome.FAILED)
        value = item.future.result()
        return value if isinstance(value, list) else [value]

    def warnings(self) -> list[str]:
        return []

    def describe(self) -> QueueView:
        with self._lock:
            lines = tuple(QueueLine(kind, len(self._running[kind]), None, self._pools[kind].size)
                          for kind in TaskKind)
        return QueueView("local process pools", lines)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown()


def _died(task: Task, error: str, outcome: Outcome = Outcome.WORKER_DIED) -> list[Result]:
    """A result per key of `task` saying it did not finish."""
    if isinstance(task, InferenceTask):
        return [InferenceResult(s.study_uid, outcome, error=error) for s in task.studies]
    return [TranscodeResult(task.sop_instance_uid, outcome, error=error)]
