"""The node on RabbitMQ with `dicomcr worker` processes, every peer real: DCMTK's storescu in, a
RabbitMQ broker of the test's own, real worker processes, Orthanc as the PACS. Faults are real
signals: SIGKILL a worker, the node, the broker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Orthanc, RabbitMQ, free_port
from test_inference import model  # noqa: F401  (the fixture: a small CNN3 model file)
from test_node import MG_A, MG_B, NodeProcess, _no_node_outlives_its_test, _pacs, runner, storescu  # noqa: F401
from test_node_faults import SC, SR, _health, _metrics, _sources, _studies, _uids, _wait

from dicomcr.jobs import InstanceState, JobStore
from services.cli import app

J2K = "1.2.840.10008.1.2.4.91"


class WorkerProcess:
    """`dicomcr worker` in its own process group, as a worker machine runs it."""

    def __init__(self, config: Path, queues: str, log: Path, concurrency: int = 1) -> None:
        self.log_path = log
        self.log = open(log, "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--config", str(config),
             "--queues", queues, "--concurrency", str(concurrency)],
            stdout=self.log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        WORKERS.append(self)
        _wait(lambda: "ready." in log.read_text() or self.process.poll() is not None,
              f"the worker did not start: {log}", timeout=60)
        assert self.process.poll() is None, log.read_text()

    def children(self) -> list[int]:
        """The prefork processes that run the tasks."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError):
                text = stat.read_text()
                if int(text[text.rindex(")") + 2:].split()[1]) == self.process.pid:
                    found.append(int(stat.parent.name))
        return found

    def kill(self) -> None:
        """SIGKILL the worker and its processes, as when its machine goes down."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.log.close()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()


WORKERS: list[WorkerProcess] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    yield
    while WORKERS:
        WORKERS.pop().terminate()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def full_size(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """Two full-size Hologic studies: an encode lasts about a second, long enough to kill."""
    from dicomcr.phantom import CohortSpec, write_cohort

    out = tmp_path_factory.mktemp("full-size")
    write_cohort(CohortSpec(n_studies=2, seed=4, size="full", vendor="hologic"), out)
    return _studies(out)


def _busy_child(worker: WorkerProcess, timeout: float = 60) -> int:
    """A prefork process of `worker` that is running a task (its CPU time grows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in worker.children():
            with contextlib.suppress(OSError):
                first = _cpu(pid)
                time.sleep(0.3)
                if _cpu(pid) - first > 10:  # clock ticks: it computes
                    return pid
        time.sleep(0.05)
    pytest.fail("no worker process took a task")


def _cpu(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def _states(node: NodeProcess) -> dict[str, int]:
    with JobStore.open_readonly(node.folder / "data" / "jobs.sqlite") as store:
        counts = store.counts()
    out: dict[str, int] = {}
    for by_kind in counts.values():
        for by_state in by_kind.values():
            for state, n in by_state.items():
                out[state] = out.get(state, 0) + n
    return out


def test_a_study_through_two_workers_and_an_inference_worker_reaches_orthanc(
        small_cohort: Path, full_size: list[list[Path]], model: Path,  # noqa: F811
        rabbitmq: RabbitMQ, orthanc: Orthanc, tmp_path: Path) -> None:
    """storescu -> node (amqp) -> two transcoding workers and one inference worker -> Orthanc:
    every image at its site's CR, the study's four SCs and its SR; one transcoding worker
    SIGKILLed mid-task: its task is redelivered and every object arrives once."""
    http_port = free_port()
    node = NodeProcess(tmp_path / "node", _pacs(orthanc),
                       sites=[{"name": "hospital-a", "calling_ae": [MG_A], "cr": 20,
                               "model": str(model)},  # small images: they fit its canvas
                              {"name": "hospital-b", "calling_ae": [MG_B], "cr": 20}],
                       stable_seconds=60, http_port=http_port,
                       queue=rabbitmq.add_vhost("e2e"))
    logs = tmp_path / "workers"
    logs.mkdir()
    first = WorkerProcess(node.config, "transcode", logs / "t1.log")
    WorkerProcess(node.config, "transcode", logs / "t2.log")
    WorkerProcess(node.config, "infer", logs / "infer.log")
    study = _studies(small_cohort)[3]  # Hologic: its crops fit the model's canvas
    try:
        assert storescu(node.port, MG_A, *study).returncode == 0
        stored = orthanc.wait_for(9, timeout=180)  # 4 images, 4 captures, 1 report
        images = [t for t in stored if t["SOPClassUID"] not in (SC, SR)]
        for tags in images:
            assert tags["TransferSyntax"] == J2K
            assert float(tags["LossyImageCompressionRatio"]) == pytest.approx(20, rel=0.02)
        classes = sorted(t["SOPClassUID"] for t in stored)
        assert classes.count(SC) == 4 and classes.count(SR) == 1
        assert sorted(_sources(orthanc)) == _uids(study)

        # A worker machine dies mid-encode (full-size images: an encode lasts a second).
        big = full_size[0]
        assert storescu(node.port, MG_B, *big).returncode == 0
        _busy_child(first, 90)
        first.kill()
        orthanc.wait_for(9 + 4, timeout=300)
        time.sleep(2)  # anything sent twice would arrive now
        assert sorted(_sources(orthanc)) == sorted(_uids(study) + _uids(big))
        _wait(lambda: _health(http_port)[1]["queue_depth"] == 0, "the queue did not drain")
        code, health = _health(http_port)
        assert code == 200 and health["status"] == "ok", health
        assert health["studies"] == {"inferred": 1, "skipped": 1}, health  # B has no model
        metrics = _metrics(http_port)
        assert metrics["dicomcr_forwarded_total"] == 13  # each object sent once
        assert metrics["dicomcr_failed_total"] == 0
        assert metrics["dicomcr_transcode_worker_peak_rss_bytes"] > 0
    finally:
        assert node.terminate() == 0


def test_the_broker_down_for_ten_seconds_and_the_node_killed_lose_nothing(
        full_size: list[list[Path]], rabbitmq: RabbitMQ, orthanc: Orthanc,
        tmp_path: Path) -> None:
    """RabbitMQ SIGKILLed while images arrive: the node keeps acknowledging (the spool is
    durable) and publishes what waited when the broker returns. Then the node SIGKILLed with
    tasks in flight: after a restart every acknowledged image arrives, once."""
    http_port = free_port()
    node = NodeProcess(tmp_path / "node", _pacs(orthanc), http_port=http_port,
                       queue=rabbitmq.add_vhost("outage"))
    logs = tmp_path / "workers"
    logs.mkdir()
    WorkerProcess(node.config, "transcode", logs / "t1.log")
    first, second = full_size
    try:
        rabbitmq.kill()  # a crash: nothing flushed (its queues exist since the worker started)
        down = time.monotonic()
        assert storescu(node.port, MG_A, *first).returncode == 0  # acknowledged, broker or not
        _wait(lambda: any("RabbitMQ" in w for w in _health(http_port)[1]["warnings"]),
              "/healthz did not say the broker is unreachable", timeout=30)
        time.sleep(max(0.0, 10 - (time.monotonic() - down)))
        assert _states(node).get(InstanceState.RECEIVED, 0) == 4  # waiting in the outbox
        rabbitmq.start()
        orthanc.wait_for(4, timeout=240)

        assert storescu(node.port, MG_A, *second).returncode == 0
        _wait(lambda: _states(node).get(InstanceState.QUEUED, 0) > 0, "nothing was published")
        node.kill()
        node.start()
        orthanc.wait_for(8, timeout=300)
        time.sleep(2)
        assert sorted(_sources(orthanc)) == sorted(_uids(first) + _uids(second))
        _wait(lambda: _health(http_port)[1]["queue_depth"] == 0, "the queue did not drain")
        assert _health(http_port)[1]["warnings"] == []
    finally:
        if not rabbitmq.running:
            rabbitmq.start()
        assert node.terminate() == 0


def test_a_task_that_kills_its_worker_every_time_is_dead_lettered_and_shown_failed(
        full_size: list[list[Path]], rabbitmq: RabbitMQ, tmp_path: Path) -> None:
    """Its worker process SIGKILLed each time it takes the task: after the delivery limit
    RabbitMQ dead-letters it, the node records the job failed with the reason (status and
    /metrics), and the next image goes through."""
    http_port = free_port()
    archive = tmp_path / "archive"
    node = NodeProcess(tmp_path / "node", {"folder": str(archive)}, http_port=http_port,
                       queue=rabbitmq.add_vhost("poison"))
    worker = WorkerProcess(node.config, "transcode", tmp_path / "worker.log")
    poison, other = full_size[0][0], full_size[1][0]
    try:
        assert storescu(node.port, MG_A, poison).returncode == 0
        for _ in range(3):  # the default node.max_worker_deaths
            os.kill(_busy_child(worker), signal.SIGKILL)
        _wait(lambda: _states(node).get(InstanceState.FAILED, 0) == 1,
              "the job was not failed", timeout=120)
        status = runner.invoke(app, ["status", "--config", str(node.config), "--failed"])
        assert status.exit_code == 0 and "delivery limit" in status.output, status.output
        metrics = _metrics(http_port)
        assert metrics["dicomcr_failed_total"] == 1 and metrics["dicomcr_dead_lettered_total"] == 1
        with JobStore.open_readonly(node.folder / "data" / "jobs.sqlite") as store:
            (failed,) = store.failures()
        assert "delivery limit" in failed.error and failed.what == "image"
        assert storescu(node.port, MG_A, other).returncode == 0  # the rest goes on
        _wait(lambda: len(list(archive.rglob("*.dcm"))) == 1, "the next image did not arrive",
              timeout=120)
    finally:
        assert node.terminate() == 0

