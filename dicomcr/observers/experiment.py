"""The detectability experiment: what each CR does to each finding type, for model observers.

`run_detectability(spec, out)` plans the views (which lesions go where, `geometry.place`), has a
process pool measure each view pair (`measure.measure_view`: render, the whole view through the
codec at every CR, ROIs at both pitches, their features), and turns the features into one row per
vendor x finding x size x contrast x CR x pitch x observer: d' and AUC with their 95 % CIs and the
paired difference against CR 1 on the same ROIs (`stats`). Vendors are kept apart: their pitches,
noise and bit depths differ, and a site has one.

OUT/views/<vendor>-<index>.npz    one file per view pair, written when it is done: a rerun
                                  measures only the views whose file is missing or was made for
                                  other inputs (spec, codec revision, observers revision)
OUT/results.csv, results.json     the rows; results.json also the spec, the run's meta and files
OUT/fig_dprime_cr.png, fig_rois.png
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..codec.j2k import CODEC_REVISION
from ..outputs import output_folder
from ..phantom.params import DETECTORS
from .geometry import Grid, Pitch, draw_breast, place
from .lesions import LesionClass, size_at
from .measure import OBSERVERS_REVISION, ObserverKind, ViewTask, column_layout, measure_view
from .results import (
    FIGURES,
    DetectabilityError,
    DetectabilityResults,
    DetectabilityRow,
    DetectabilitySpec,
    load_results,
    write_results,
)
from .stats import Estimate, Resampling, auc_of, estimate, fixed_dprimes, hotelling_dprimes, paired_difference

MAX_VIEWS = 2000  # a task that needs more views than this is misspecified


def plan_views(spec: DetectabilitySpec, views: Path) -> list[ViewTask]:
    """Every view pair the spec needs, vendor by vendor, until each class has `spec.pairs`."""
    classes = spec.classes
    tasks: list[ViewTask] = []
    for vendor in spec.vendors:
        detector = DETECTORS[vendor]
        left = [spec.pairs] * len(classes)
        examples_wanted = _example_classes(spec) if vendor == spec.vendors[0] else set()
        empty = 0
        for index in range(MAX_VIEWS):
            if not any(left):
                break
            task = ViewTask(vendor, index, spec.seed, classes, (), spec.crs, spec.pitches, (),
                            views / f"{vendor}-{index:04d}.npz")
            shape, _ = draw_breast(detector, task.stream(0))
            placed = place(shape, vendor, list(classes), left,
                           np.random.default_rng(task.stream(3)))
            empty = 0 if placed else empty + 1
            if empty >= 20:
                big = max(classes, key=lambda c: c.roi_half_mm)
                raise DetectabilityError(f"no {vendor} view holds a {big.name} lesion and its ROI "
                                         f"(a {2 * big.roi_half_mm:.0f} mm square inside the breast)")
            for p in placed:
                left[p.lesion] -= 1
            examples = []
            for i, p in enumerate(placed):  # the first lesion of each shown class
                if p.lesion in examples_wanted:
                    examples.append(i)
                    examples_wanted.discard(p.lesion)
            tasks.append(ViewTask(vendor, index, spec.seed, classes, tuple(placed), spec.crs,
                                  spec.pitches, tuple(examples), task.path))
        else:
            raise DetectabilityError(f"{spec.pairs} pairs per class need more than {MAX_VIEWS} "
                                     f"{vendor} views")
    return tasks


def _example_classes(spec: DetectabilitySpec) -> set[int]:
    """The class shown in fig_rois.png for each finding: its largest size, physical contrast
    (or the highest asked), so that one sees it at CR 1 and sees what the CRs leave of it."""
    classes = spec.classes
    chosen = set()
    for finding in spec.findings:
        mine = [i for i, c in enumerate(classes) if c.finding is finding]
        chosen.add(max(mine, key=lambda i: (classes[i].size_quantile, classes[i].contrast == 1.0,
                                            classes[i].contrast)))
    return chosen


def _finished(task: ViewTask) -> bool:
    try:
        with np.load(task.path) as stored:
            return str(stored["identity"]) == task.identity
    except (OSError, ValueError, KeyError):
        return False


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch and BLAS on one thread for the block: one view per process (no oversubscription),
    and the same sums in the same order wherever a view is measured (the same features)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


class _Runner:
    """Runs jobs in this process (one worker) or in one pool of `workers` spawned processes,
    started at the first job that needs it and kept for the next."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, function: Callable, jobs: list[tuple], done: Callable[[object, int], None]) -> None:
        """function(*job) for every job; done(result, how many are done) as each finishes."""
        if self.workers <= 1 or len(jobs) <= 1:
            for count, job in enumerate(jobs, start=1):
                with _one_thread():
                    done(function(*job), count)
            return
        if self.pool is None:
            context = multiprocessing.get_context("spawn")  # torch and fork do not mix
            self.pool = ProcessPoolExecutor(self.workers, context)
        futures = [self.pool.submit(_in_one_thread, function, *job) for job in jobs]
        try:
            for count, future in enumerate(as_completed(futures), start=1):
                done(future.result(), count)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _in_one_thread(function: Callable, *args: object) -> object:
    with _one_thread():
        return function(*args)


def _measure(runner: _Runner, tasks: list[ViewTask],
             progress: Callable[[int, int], None] | None) -> dict[str, float]:
    """Measure `tasks`, each writing its file; the CPU seconds of each stage, over the views."""
    seconds = {"render": 0.0, "ladder": 0.0, "observers": 0.0}

    def done(spent: dict[str, float], count: int) -> None:
        for k, v in spent.items():
            seconds[k] += v
        if progress:
            progress(count, len(tasks))

    # Hologic views first: the biggest jobs start early, the small ones fill the end
    order = sorted(tasks, key=lambda t: -DETECTORS[t.vendor].rows * DETECTORS[t.vendor].columns)
    runner.map(measure_view, [(t,) for t in order], done)
    return seconds


def _features(tasks: list[ViewTask], vendor: str, lesion: int, pitch: Pitch
              ) -> tuple[np.ndarray, np.ndarray]:
    """(features (pairs, CRs, [absent, present], columns), achieved CRs (views, CRs, 2)) of one
    class of one vendor, the views in order."""
    parts, achieved = [], []
    for task in tasks:
        if task.vendor != vendor:
            continue
        with np.load(task.path) as stored:
            if str(stored["identity"]) != task.identity:
                raise DetectabilityError(f"{task.path} changed while the run read it; run it again")
            mine = stored["placements"][:, 0] == lesion
            if mine.any():
                parts.append(stored[f"features_{pitch.value}"][mine])
                achieved.append(stored["achieved"])
    return np.concatenate(parts), np.stack(achieved)


def summarise(spec: DetectabilitySpec, tasks: list[ViewTask], runner: _Runner | None = None
              ) -> tuple[list[DetectabilityRow], dict[str, float]]:
    """The rows, vendor by vendor and class by class (one job each), and the CPU seconds of each
    observer's statistics."""
    results: dict[tuple[int, int], list[DetectabilityRow]] = {}
    seconds = {o.value: 0.0 for o in spec.observers}
    jobs = [(spec, tasks, v, i) for v in range(len(spec.vendors)) for i in range(len(spec.classes))]

    def done(result: tuple, count: int) -> None:
        key, rows, spent = result
        results[key] = rows
        for k, value in spent.items():
            seconds[k] += value

    (runner or _Runner(1)).map(_class_rows, jobs, done)
    return [r for key in sorted(results) for r in results[key]], seconds


def _class_rows(spec: DetectabilitySpec, tasks: list[ViewTask], v: int, i: int
                ) -> tuple[tuple[int, int], list[DetectabilityRow], dict[str, float]]:
    """The rows of vendor v's class i: the same resamples for every pitch, observer and CR."""
    vendor, cls = spec.vendors[v], spec.classes[i]
    reference = spec.crs.index(1.0)
    rows, seconds = [], {o.value: 0.0 for o in spec.observers}
    resampling = None
    for pitch in spec.pitches:
        features, achieved = _features(tasks, vendor, i, pitch)
        if resampling is None:
            resampling = Resampling.draw(len(features), spec.splits, spec.bootstrap,
                                         np.random.SeedSequence(spec.seed, spawn_key=(v, i)))
        layout = column_layout(vendor, pitch)
        for observer in spec.observers:
            start, stop = layout[observer]
            began = time.process_time()
            replicates = [_replicates(features[:, k, 1, start:stop], features[:, k, 0, start:stop],
                                      resampling, observer) for k in range(len(spec.crs))]
            seconds[observer.value] += time.process_time() - began
            ref = replicates[reference]
            for k, cr in enumerate(spec.crs):
                rows.append(_row(vendor, cls, cr, float(achieved[:, k].mean()), pitch, observer,
                                 len(features), estimate(replicates[k], resampling),
                                 estimate(ref, resampling),
                                 *paired_difference(replicates[k], ref, resampling)))
    return (v, i), rows, seconds


def _replicates(present: np.ndarray, absent: np.ndarray, resampling: Resampling,
                observer: ObserverKind) -> np.ndarray:
    if observer.trained:
        return hotelling_dprimes(present, absent, resampling)
    return fixed_dprimes(present[:, 0], absent[:, 0], resampling)


def _row(vendor: str, cls: LesionClass, cr: float, achieved: float, pitch: Pitch,
         observer: ObserverKind, pairs: int, d: Estimate, ref: Estimate, delta: Estimate,
         relative: Estimate) -> DetectabilityRow:
    return DetectabilityRow(
        vendor=vendor, finding=cls.finding, size_quantile=cls.size_quantile, size_mm=cls.size_mm,
        contrast=cls.contrast, cr=cr, achieved_cr=achieved, pitch=pitch,
        pitch_mm=Grid.of(vendor, pitch).pitch_mm, observer=observer, pairs=pairs,
        dprime=d.value, dprime_low=d.low, dprime_high=d.high,
        auc=auc_of(d.value), auc_low=auc_of(d.low), auc_high=auc_of(d.high),
        dprime_cr1=ref.value, dprime_cr1_low=ref.low, dprime_cr1_high=ref.high,
        delta_dprime=delta.value, delta_low=delta.low, delta_high=delta.high,
        delta_pct=relative.value, delta_pct_low=relative.low, delta_pct_high=relative.high)


def _cached(spec: DetectabilitySpec, out: Path) -> DetectabilityResults | None:
    try:
        results = load_results(out)
        same = json.loads((out / "results.json").read_text()).get("identity") == spec.identity
    except (DetectabilityError, OSError, ValueError):
        return None
    return results if same and all((out / f).exists() for f in FIGURES) else None


def run_detectability(spec: DetectabilitySpec, out: Path, workers: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> DetectabilityResults:
    """Run (or finish, or just load) the experiment into `out`; see the module's docstring.

    `workers` processes measure the views (default: every core); `progress(done, total)` is
    called as views finish. Bad input raises DetectabilityError before any work."""
    try:
        out = output_folder(Path(out))
    except ValueError as exc:
        raise DetectabilityError(str(exc)) from None
    cached = _cached(spec, out)
    if cached is not None:
        return cached
    started = time.perf_counter()
    views = out / "views"
    try:
        views.mkdir(exist_ok=True)
    except OSError as exc:
        raise DetectabilityError(f"cannot create {views}: {exc.strerror or exc}") from None
    tasks = plan_views(spec, views)
    planned = time.perf_counter() - started
    todo = [t for t in tasks if not _finished(t)]
    workers = workers if workers and workers > 0 else (os.cpu_count() or 1)
    with _Runner(workers) as runner:
        seconds = _measure(runner, todo, progress)
        measured = time.perf_counter() - started - planned
        rows, statistics = summarise(spec, tasks, runner)
    summarised = time.perf_counter() - started - planned - measured
    meta = {
        "codec_revision": CODEC_REVISION, "observers_revision": OBSERVERS_REVISION,
        "views": {v: sum(t.vendor == v for t in tasks) for v in spec.vendors},
        "views_measured": len(todo), "workers": workers,
        "sizes_mm": {f"{c.finding.value} q{c.size_quantile:g}": size_at(c.finding, c.size_quantile)
                     for c in spec.classes},
        "ci": "BCa bootstrap over pairs, 95 %; the same resamples for every CR, pitch and "
              "observer of a class (paired differences)",
        # wall seconds of each phase; *_cpu: CPU seconds summed over the processes
        "seconds": {"plan": planned, "views": measured, "statistics": summarised,
                    **{f"views_{k}_cpu": v for k, v in seconds.items()},
                    **{f"statistics_{k}_cpu": v for k, v in statistics.items()}},
    }
    results = DetectabilityResults(out, spec, tuple(rows), meta)
    from .figures import dprime_figure, rois_figure  # matplotlib: only when figures are drawn

    dprime_figure(results, out / FIGURES[0])
    rois_figure(results, tasks, out / FIGURES[1])
    meta["seconds"]["total"] = time.perf_counter() - started
    write_results(out, spec, rows, meta)
    return results

