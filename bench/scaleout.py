"""Benchmark the node's scale-out: the local backend against RabbitMQ workers, and the broker's cost.

    nice -n 5 .venv/bin/python bench/scaleout.py [--studies 3] [--repeats 3] [--tasks 200]

1. Throughput (images/s) on full-size Hologic images: DCMTK's storescu sends them all to a node at
   CR 20 that archives into a folder, timed from the start of sending until every image's output
   is in the archive. The same images for every configuration:
   (a) `queue: local`, `workers: N`;
   (b) `queue: amqp://...`, one `dicomcr worker --concurrency 1`;
   (c) `queue: amqp://...`, N such workers,
   where N is this machine's cores. Each run has a fresh node (storage, archive) and its own
   vhost on one RabbitMQ started here (not the system's), warmed up first with four small images
   (worker processes spawned, the codec imported). The configurations are interleaved, and each
   one's median is printed with the ratios (b)/(a) and (c)/(a) (target (c)/(a) >= 0.9), the CPU
   seconds per image of the node's process and of the workers' (what sizes a scale-out: a busy
   machine stretches the wall times, not these), and the peak RSS of a transcoding worker (the
   node's /metrics, and the processes' VmHWM).
2. The broker's cost per task: K trivial tasks (a source that does not exist: the worker fails
   it at once) published through AmqpQueue to one worker, wall time until every result is back,
   less K times the same task run in-process (`run_transcode`), over K; the publish (with its
   confirm) alone per task; and the same round trip through the local backend's pool.
Everything started here (nodes, workers: their process groups; the broker) is stopped on exit,
Ctrl-C included. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from peers import LocalRabbitMQ, free_port

from dicomcr.config import Policy
from dicomcr.jobs import JobStore, Storage
from dicomcr.phantom import CohortSpec, write_cohort
from services.processes import wait_for_port
from services.workqueue import TaskKind, TranscodeTask
from services.workqueue.amqp import AmqpQueue, delivery_limit
from services.workqueue.base import run_transcode
from services.workqueue.local import LocalQueue

STORESCU = "/usr/bin/storescu"  # DCMTK's: the venv's bin holds pynetdicom's, of the same name
PDU = 65536
CR = 20
CALLING = "BENCH"
PEAK_RSS = "dicomcr_transcode_worker_peak_rss_bytes"
STARTED: list[subprocess.Popen] = []  # process group leaders, stopped on exit


class BenchError(RuntimeError):
    """A run that cannot give a figure (a failed transcode, a process that died): says why."""


# -- processes ------------------------------------------------------------------------------
def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    """`argv` in its own process group (a Ctrl-C reaches only us; we stop it), logging to `log`."""
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    STARTED.append(process)
    return process


def _stop(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM the process group (the node drains, a worker shuts down warm), SIGKILL if late."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # its children too, whatever the leader did
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with contextlib.suppress(ValueError):
        STARTED.remove(process)


def _wait(condition: Callable[[], bool], what: str, timeout: float, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s: {what}")
        time.sleep(poll)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (pool or prefork processes), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _hwm_mib(pids: list[int]) -> float:
    """The largest peak resident set (VmHWM) among `pids`, in MiB."""
    peak = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


# -- one configuration ----------------------------------------------------------------------
def _config(folder: Path, queue: str, workers: int) -> tuple[Path, int, int]:
    """A node.yaml in `folder` (its storage and archive under it): the path, DICOM and HTTP ports."""
    port, http_port = free_port(), free_port()
    folder.mkdir(parents=True)
    config = folder / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"ae_title": "DICOMCR", "host": "127.0.0.1", "port": port,
                 "storage": str(folder / "data"), "http_port": http_port, "max_pdu": PDU,
                 "workers": workers, "stable_seconds": 3600, "queue": queue},
        "sites": [{"name": "bench", "calling_ae": [CALLING], "cr": CR}],
        "destinations": {"archive": {"folder": str(folder / "archive")}},
        "forward": {"to": "archive"}}))
    return config, port, http_port


def _worker(config: Path, log: Path) -> subprocess.Popen:
    """`dicomcr worker --queues transcode --concurrency 1`, once it says it is ready."""
    process = _spawn([sys.executable, "-m", "services.cli", "worker", "--config", str(config),
                      "--queues", "transcode", "--concurrency", "1"], log)
    _wait(lambda: "ready." in log.read_text(errors="replace") or process.poll() is not None,
          f"the worker did not start ({log})", timeout=120, poll=0.1)
    if process.poll() is not None:
        raise BenchError(f"the worker exited with {process.returncode}: {log.read_text()[-2000:]}")
    return process


def _failures(folder: Path) -> str:
    with JobStore.open_readonly(Storage(folder / "data").store) as store:
        return "; ".join(f"{f.uid}: {f.error}" for f in store.failures()[:3])


@dataclass(frozen=True)
class Run:
    """One configuration's run over the timed images."""

    seconds: float  # from the start of sending until the last output was archived
    sending: float  # storescu's own time
    rss_metrics_mib: float  # dicomcr_transcode_worker_peak_rss_bytes
    rss_hwm_mib: float  # the largest VmHWM of a process that ran tasks
    node_cpu: float  # CPU seconds of the node's own process, per image
    worker_cpu: float  # CPU seconds of the processes that ran tasks (and their parents), per image


def _send(port: int, files: list[Path], timeout: float) -> None:
    sent = subprocess.run([STORESCU, "-aec", "DICOMCR", "-aet", CALLING, "--max-pdu", str(PDU),
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)
    if sent.returncode != 0:
        raise BenchError(f"storescu exited with {sent.returncode}: {sent.stderr[-2000:]}")


def _ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process, in clock ticks."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            text = Path(f"/proc/{pid}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()
            out[pid] = int(fields[11]) + int(fields[12])
    return out


def _cpu_since(before: dict[int, int], pids: list[int]) -> float:
    """CPU seconds `pids` used since `before` (a process that is new counts from zero)."""
    now = _ticks(pids)
    return sum(t - before.get(pid, 0) for pid, t in now.items()) / os.sysconf("SC_CLK_TCK")


def run_config(folder: Path, warmup: list[Path], files: list[Path], queue: str,
               node_workers: int, worker_processes: int, timeout: float) -> Run:
    """A fresh node (and its workers), warmed up with `warmup` (worker processes spawned, the
    codec imported), then `files` sent and timed until all their outputs are in its archive."""
    config, port, http_port = _config(folder, queue, node_workers)
    node = _spawn([sys.executable, "-m", "services.cli", "serve", "--config", str(config)],
                  folder / "node.log")
    workers: list[subprocess.Popen] = []
    try:
        wait_for_port(port, node, timeout=60)
        wait_for_port(http_port, node, timeout=60)
        workers = [_worker(config, folder / f"worker{i}.log") for i in range(worker_processes)]
        archive = folder / "archive"
        checked = [0.0]

        def archived(count: int) -> Callable[[], bool]:
            def check() -> bool:
                if node.poll() is not None:
                    raise BenchError(f"the node exited with {node.returncode}: "
                                     f"{(folder / 'node.log').read_text()[-2000:]}")
                if time.monotonic() - checked[0] > 1.0:  # a failed job ends the run, saying why
                    checked[0] = time.monotonic()
                    if _metrics(http_port).get("dicomcr_failed_total", 0) > 0:
                        raise BenchError(f"transcoding failed: {_failures(folder)}")
                return archive.is_dir() and sum(1 for _ in archive.rglob("*.dcm")) >= count
            return check

        _send(port, warmup, timeout)
        _wait(archived(len(warmup)), f"{len(warmup)} warm-up outputs in {archive}", timeout)

        def runners() -> list[int]:  # the processes that run tasks, and the workers themselves
            if not workers:
                return _descendants(node.pid)
            return [pid for w in workers for pid in (w.pid, *_descendants(w.pid))]

        node_before, workers_before = _ticks([node.pid]), _ticks(runners())
        start = time.perf_counter()
        _send(port, files, timeout)
        sending = time.perf_counter() - start
        _wait(archived(len(warmup) + len(files)), f"{len(files)} outputs in {archive}", timeout)
        elapsed = time.perf_counter() - start
        node_cpu = _cpu_since(node_before, [node.pid])
        worker_cpu = _cpu_since(workers_before, runners())
        rss = _metrics(http_port).get(PEAK_RSS, 0.0) / 2**20
        tasks = [pid for w in workers for pid in _descendants(w.pid)] or runners()
        return Run(elapsed, sending, rss, _hwm_mib(tasks), node_cpu / len(files),
                   worker_cpu / len(files))
    finally:
        for process in [*workers, node]:
            _stop(process)


# -- the broker's cost per task ------------------------------------------------------------
def _trivial(folder: Path, count: int) -> list[TranscodeTask]:
    """Tasks whose source does not exist: the worker fails each at once."""
    return [TranscodeTask(f"1.2.826.0.1.3680043.10.1{i}", folder / "missing" / f"{i}.dcm",
                          folder / "out" / str(i), Policy.parse(CR)) for i in range(count)]


def _round_trip(queue, tasks: list[TranscodeTask], timeout: float) -> tuple[float, float]:
    """Submit every task and collect every result: (wall seconds, publish seconds)."""
    start = time.perf_counter()
    for task in tasks:
        queue.submit(task)
    published = time.perf_counter() - start
    got = 0
    deadline = time.monotonic() + timeout
    while got < len(tasks):
        if time.monotonic() > deadline:
            raise BenchError(f"{got} of {len(tasks)} results after {timeout:.0f} s")
        got += len(queue.results(TaskKind.TRANSCODE, 1.0))
    return time.perf_counter() - start, published


def broker_cost(folder: Path, url: str, count: int) -> dict[str, float]:
    """Seconds per task: in-process, through RabbitMQ and one worker, through a local pool."""
    config, _, _ = _config(folder, url, 1)
    storage = folder / "data"
    tasks = _trivial(folder, count)
    for task in tasks[:5]:  # imports, first-call costs
        run_transcode(task)
    start = time.perf_counter()
    for task in tasks:
        run_transcode(task)
    direct = (time.perf_counter() - start) / count

    worker = _worker(config, folder / "worker.log")
    queue = AmqpQueue(url, storage, delivery_limit(3))
    try:
        _round_trip(queue, _trivial(folder / "warm", 5), timeout=120)  # connection, declares
        wall, published = _round_trip(queue, tasks, timeout=600)
    finally:
        queue.close()
        _stop(worker)

    local = LocalQueue(1)
    try:
        _round_trip(local, _trivial(folder / "warm", 5), timeout=120)  # the process spawned
        local_wall, _ = _round_trip(local, tasks, timeout=600)
    finally:
        local.close()
    return {"direct": direct, "amqp": wall / count, "publish": published / count,
            "local": local_wall / count}


# -- main -----------------------------------------------------------------------------------
def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=3, help="full-size Hologic studies (4 "
                                                               "images each)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration")
    parser.add_argument("--tasks", type=int, default=200, help="trivial tasks for the broker's "
                                                               "cost")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                        help="N: local workers, and amqp worker processes in (c)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    began = time.perf_counter()
    broker: LocalRabbitMQ | None = None
    with tempfile.TemporaryDirectory(prefix="dicomcr-scaleout-") as tmp:
        tmp = Path(tmp)
        try:
            cohort = write_cohort(CohortSpec(n_studies=args.studies, seed=3, size="full",
                                             vendor="hologic"), tmp / "in")
            files = sorted(cohort.dicom.glob("*/*.dcm"))
            warm = write_cohort(CohortSpec(n_studies=1, seed=5, size="small", vendor="hologic"),
                                tmp / "warm")
            warmup = sorted(warm.dicom.glob("*/*.dcm"))
            size = sum(p.stat().st_size for p in files) / 2**20
            print(f"{len(files)} full-size Hologic images, {size:.0f} MiB "
                  f"({size / len(files):.1f} MiB each), CR {CR}; N = {args.cores} cores; "
                  f"load average {os.getloadavg()[0]:.2f} at start", flush=True)

            broker = LocalRabbitMQ(tmp / "rabbitmq")

            def vhost(name: str) -> str:
                broker.ctl("add_vhost", name)
                broker.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
                return f"amqp://guest:guest@127.0.0.1:{broker.port}/{name}"

            n = args.cores
            configs = {"a": (f"local, workers: {n}", 0),
                       "b": ("amqp, 1 worker", 1),
                       "c": (f"amqp, {n} workers", n)}
            runs: dict[str, list[Run]] = {key: [] for key in configs}
            timeout = 120 + 60 * len(files)
            for repeat in range(args.repeats):  # interleaved: a drift in load hits each alike
                for key, (label, processes) in configs.items():
                    queue = "local" if processes == 0 else vhost(f"{key}{repeat}")
                    run = run_config(tmp / f"{key}{repeat}", warmup, files, queue, n, processes,
                                     timeout)
                    runs[key].append(run)
                    print(f"   round {repeat + 1} ({key}) {label}: {run.seconds:.1f} s "
                          f"({len(files) / run.seconds:.2f} images/s; storescu "
                          f"{run.sending:.1f} s)", flush=True)

            print(f"1. throughput, median of {args.repeats} (send start to last output "
                  f"archived, after a {len(warmup)}-image warm-up):")
            rate = {}
            for key, (label, _) in configs.items():
                seconds = statistics.median(r.seconds for r in runs[key])
                rate[key] = len(files) / seconds
                print(f"   ({key}) {label:<18} {seconds:6.1f} s {rate[key]:5.2f} images/s | CPU "
                      f"per image: node {statistics.median(r.node_cpu for r in runs[key]):.2f} "
                      f"s, workers {statistics.median(r.worker_cpu for r in runs[key]):.2f} s | "
                      f"worker peak RSS {max(r.rss_metrics_mib for r in runs[key]):.0f} MiB "
                      f"(/metrics), {max(r.rss_hwm_mib for r in runs[key]):.0f} MiB (VmHWM)")
            for key in ("b", "c"):
                rounds = ", ".join(f"{a.seconds / x.seconds:.2f}"
                                   for a, x in zip(runs["a"], runs[key], strict=True))
                target = " (target >= 0.9)" if key == "c" else ""
                print(f"   ratio ({key})/(a) = {rate[key] / rate['a']:.2f}{target}; "
                      f"per round {rounds}")
            print(f"   load average {os.getloadavg()[0]:.2f} after", flush=True)

            cost = broker_cost(tmp / "cost", vhost("cost"), args.tasks)
            ms = {key: 1000 * value for key, value in cost.items()}
            print(f"2. cost per task, {args.tasks} trivial tasks, one worker process:")
            print(f"   in-process run_transcode       {ms['direct']:7.2f} ms")
            print(f"   amqp round trip                {ms['amqp']:7.2f} ms -> broker's cost "
                  f"{ms['amqp'] - ms['direct']:.2f} ms per task")
            print(f"     of which publish + confirm   {ms['publish']:7.2f} ms")
            print(f"   local pool round trip          {ms['local']:7.2f} ms -> pool's cost "
                  f"{ms['local'] - ms['direct']:.2f} ms per task")
        except KeyboardInterrupt:
            print("interrupted: stopping what was started", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            for process in list(STARTED):
                _stop(process, timeout=10)
            if broker is not None:
                broker.close()
            print(f"({time.perf_counter() - began:.0f} s in all)", flush=True)


if __name__ == "__main__":
    main()
