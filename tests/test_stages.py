"""The node's stages in-process, without a network or a worker: each stage over a real job store in
a temporary folder and a scripted work queue (a WorkQueue whose results the test decides), as
pynetdicom tests its handlers without a network. The same stages against real peers, real
workers and real signals are in test_node.py, test_node_faults.py and test_scaleout.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dicomcr.config import Policy, load_config
from dicomcr.jobs import (
    ForbiddenTransition,
    InstanceState,
    JobStore,
    ObjectKind,
    Storage,
    StudyState,
)
from services.metrics import Metrics
from services.receiver import SUCCESS
from services.stages import context, queued
from services.stages.context import Loop, NodeContext
from services.stages.forward import ForwardStage
from services.stages.infer import BATCH_STUDIES, InferenceStage
from services.stages.receive import ReceiveStage
from services.stages.retention import RetentionStage
from services.stages.transcode import TranscodeStage
from services.workqueue import (
    DerivedObject,
    InferenceResult,
    InferenceTask,
    Outcome,
    QueueLine,
    QueueUnavailable,
    QueueView,
    Result,
    Task,
    TaskKind,
    TranscodeResult,
    TranscodeTask,
)

MG = "1.2.840.10008.5.1.4.1.1.1.2"


class ScriptedQueue:
    """A WorkQueue that runs nothing: it keeps what was submitted, and hands back the results a
    test gives it (`finish`), announcing them as the local pools do."""

    waits_on_stop = True
    announces = True

    def __init__(self, room: int = 4) -> None:
        self.room = room
        self.submitted: list[Task] = []
        self.running: dict[TaskKind, int] = {kind: 0 for kind in TaskKind}
        self.finished: dict[TaskKind, list[Result]] = {kind: [] for kind in TaskKind}
        self.watchers: dict[TaskKind, list[Callable[[], None]]] = {k: [] for k in TaskKind}
        self.down = False

    def capacity(self, kind: TaskKind) -> int:
        return self.room - self.running[kind]

    def submit(self, task: Task) -> None:
        if self.down:
            raise QueueUnavailable("the broker is down")
        self.submitted.append(task)
        self.running[task.kind] += 1

    def finish(self, kind: TaskKind, *results: Result) -> None:
        self.running[kind] -= 1
        self.finished[kind] += results
        for callback in self.watchers[kind]:
            callback()

    def results(self, kind: TaskKind, timeout: float) -> list[Result]:
        found, self.finished[kind] = self.finished[kind], []
        return found

    def watch(self, kind: TaskKind, callback: Callable[[], None]) -> None:
        self.watchers[kind].append(callback)

    def warnings(self) -> list[str]:
        return []

    def describe(self) -> QueueView:
        return QueueView("scripted", tuple(QueueLine(kind, self.running[kind], None, self.room)
                                           for kind in TaskKind))

    def close(self) -> None:
        pass


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A node's context: a config with a CR 20 site `a`, a pass-through site `raw`, a folder
    destination; a real job store; the scripted queue. A round with nothing to do sleeps 50 ms
    here, not the node's IDLE_CHECK_SECONDS."""
    monkeypatch.setattr(context, "IDLE_CHECK_SECONDS", 0.05)
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"storage": str(tmp_path / "data"), "max_worker_deaths": 3,
                 "stable_seconds": 30},
        "sites": [{"name": "a", "calling_ae": ["MG_A"], "cr": 20},
                  {"name": "raw", "calling_ae": ["MG_RAW"], "cr": "none"}],
        "destinations": {"archive": {"folder": str(tmp_path / "archive")}},
        "forward": {"to": "archive"}}))
    storage = Storage(tmp_path / "data")
    storage.root.mkdir()
    store = JobStore(storage.store)
    ctx = NodeContext(load_config(config), storage, store, ScriptedQueue(), Metrics(), poll=0.01)
    yield ctx
    store.close()


def _receive(ctx: NodeContext, uid: str, study: str = "1.9", site: str = "a",
             skipped: str | None = None) -> Path:
    source = ctx.storage.spooled(uid)
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"source of " + uid.encode())
    ctx.store.received(sop_instance_uid=uid, sop_class_uid=MG, study_uid=study, calling_ae="X",
                       site=site, policy=Policy.parse("none" if site == "raw" else "20"),
                       spool_path=source, size=1, skipped=skipped)
    return source


def _state(ctx: NodeContext, uid: str) -> InstanceState:
    counts = {}
    for state in InstanceState:
        counts[state] = [j.uid for j in ctx.store._jobs("state=?", (state.value,))]
    return next(state for state, uids in counts.items() if uid in uids)


def _output(ctx: NodeContext, uid: str) -> Path:
    out = ctx.storage.outputs_of(uid) / "20" / "image.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"j2k")
    return out


# -- the transition table ----------------------------------------------------------------------
def test_a_state_change_the_table_lacks_raises_and_changes_nothing(node: NodeContext) -> None:
    from dicomcr.jobs import INSTANCES

    _receive(node, "1.1")
    node.store.failed("1.1", "bad")
    with pytest.raises(ForbiddenTransition, match="failed -> done is not allowed"):
        node.store.move(INSTANCES, "1.1", InstanceState.FAILED, InstanceState.DONE)
    assert _state(node, "1.1") is InstanceState.FAILED
    # Stale, not forbidden: a failed instance is not delivered by a late forward.
    assert not node.store.done("1.1") and _state(node, "1.1") is InstanceState.FAILED
    # An image sent again while it was forwarded is not marked done by the old one's Success.
    _receive(node, "1.2")
    node.store.transcoded("1.2", [_output(node, "1.2")])
    _receive(node, "1.2")
    assert not node.store.done("1.2") and _state(node, "1.2") is InstanceState.RECEIVED


# -- transcode ---------------------------------------------------------------------------------
def test_transcode_hands_out_records_and_wakes_the_next_stages(node: NodeContext) -> None:
    stage, queue = TranscodeStage(node), node.queue
    _receive(node, "1.1")
    _receive(node, "1.2", site="raw")  # pass-through: no worker
    stage.step(accepting=True)
    (task,) = queue.submitted
    assert isinstance(task, TranscodeTask) and task.sop_instance_uid == "1.1"
    assert task.out == node.storage.outputs_of("1.1") and task.policy == Policy.parse("20")
    assert _state(node, "1.1") is InstanceState.QUEUED
    assert _state(node, "1.2") is InstanceState.TRANSCODED  # its source is its output
    assert node.wakes[Loop.FORWARD].is_set() and node.wakes[Loop.INFER].is_set()
    node.wakes[Loop.FORWARD].clear()

    out = _output(node, "1.1")
    queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.1", Outcome.DONE, (out,), 20.1, 1.0, 99.0))
    assert node.wakes[Loop.TRANSCODE].is_set()  # the queue announced it
    stage.step(accepting=True)
    (job,) = [j for j in node.store.to_forward(10) if j.uid == "1.1"]
    assert job.outputs == (out,) and stage.peak_rss_mb == 99.0
    assert node.metrics.counts["transcoded"] == 2 and node.wakes[Loop.FORWARD].is_set()


def test_every_way_a_transcoding_task_comes_back(node: NodeContext) -> None:
    stage, queue = TranscodeStage(node), node.queue
    for uid in ("1.1", "1.2", "1.3", "1.4"):
        _receive(node, uid)
    stage.step(accepting=True)
    assert [t.sop_instance_uid for t in queue.submitted] == ["1.1", "1.2", "1.3", "1.4"]
    queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.1", Outcome.FAILED, error="bad codestream"))
    queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.2", Outcome.NOT_RUN))
    partial = node.storage.outputs_of("1.3") / "20" / ".image.dcm.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half")
    queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.3", Outcome.DISK_FULL, error="No space"))
    queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.4", Outcome.DEAD_LETTERED,
                                                     error="delivery limit"))
    stage.step(accepting=False)  # stopping: records, hands nothing out
    failures = {f.uid: f for f in node.store.failures()}
    assert failures["1.1"].error == "bad codestream"
    assert failures["1.1"].where == node.storage.spooled("1.1")  # the worker's no: kept in spool
    assert failures["1.4"].where.parent == node.storage.quarantine  # poison: quarantined
    assert "delivery limit" in failures["1.4"].where.with_suffix(".reason.txt").read_text()
    assert _state(node, "1.2") is InstanceState.RECEIVED  # not run: nothing counted
    assert [j.uid for j in node.store.to_transcode(10)] == ["1.2"]  # 1.3 waits for its retry
    assert not partial.exists() and node.recent_disk_full() is not None
    assert node.store.next_due(InstanceState.RECEIVED) > time.time()
    assert (node.metrics.counts["failed"], node.metrics.counts["dead_lettered"],
            node.metrics.counts["disk_full_retries"]) == (2, 1, 1)


def test_a_job_whose_worker_died_runs_alone_and_fails_at_the_limit(node: NodeContext) -> None:
    stage, queue = TranscodeStage(node), node.queue
    _receive(node, "1.1")
    _receive(node, "1.2")
    stage.step(accepting=True)
    queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.1", Outcome.WORKER_DIED))
    stage.step(accepting=True)
    assert (_state(node, "1.1"), node.store.to_transcode(5)[0].worker_deaths) == (
        InstanceState.RECEIVED, 1)
    assert len(queue.submitted) == 2  # 1.2 still in flight: 1.1 waits to run alone
    queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.2", Outcome.DONE, (_output(node, "1.2"),)))
    _receive(node, "1.3")  # newer: must not start beside 1.1
    stage.step(accepting=True)  # hands out (nothing: 1.2 still out), then records 1.2
    stage.step(accepting=True)
    assert [t.sop_instance_uid for t in queue.submitted[2:]] == ["1.1"]
    stage.step(accepting=True)
    assert len(queue.submitted) == 3  # 1.3 waits while 1.1 runs alone
    for death in (2, 3):
        queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.1", Outcome.WORKER_DIED))
        stage.step(accepting=True)
        stage.step(accepting=True)
        if death < 3:
            assert [t.sop_instance_uid for t in queue.submitted[-1:]] == ["1.1"]
    (failure,) = node.store.failures()
    assert failure.uid == "1.1" and failure.error == "worker died 3 times"
    assert failure.where.parent == node.storage.quarantine
    assert [t.sop_instance_uid for t in queue.submitted[-1:]] == ["1.3"]  # the others go on


def test_a_worker_killed_with_the_node_counts_no_death(node: NodeContext) -> None:
    stage, queue = TranscodeStage(node), node.queue
    _receive(node, "1.1")
    stage.step(accepting=True)
    assert stage.busy()
    node.stopping.set()
    queue.finish(TaskKind.TRANSCODE, TranscodeResult("1.1", Outcome.WORKER_DIED))
    stage.step(accepting=False)
    (job,) = node.store.to_transcode(5)
    assert job.worker_deaths == 0 and not stage.busy()


def test_a_broker_that_is_down_leaves_the_job_in_the_outbox(node: NodeContext,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queued, "QUEUE_RETRY_SECONDS", 0.3)
    stage, queue = TranscodeStage(node), node.queue
    _receive(node, "1.1")
    queue.down = True
    stage.step(accepting=True)
    assert _state(node, "1.1") is InstanceState.RECEIVED and not stage.busy()
    queue.down = False
    stage.step(accepting=True)  # not tried again at once: every round would say it again
    assert _state(node, "1.1") is InstanceState.RECEIVED
    time.sleep(0.3)
    stage.step(accepting=True)
    assert _state(node, "1.1") is InstanceState.QUEUED


# -- inference ---------------------------------------------------------------------------------
def _transcoded_study(ctx: NodeContext, study: str, site: str = "a", views: int = 4) -> None:
    for view in range(views):
        uid = f"{study}.{view}"
        _receive(ctx, uid, study=study, site=site)
        ctx.store.transcoded(uid, [_output(ctx, uid)])


def test_inference_batches_studies_by_model_and_records_their_objects(node: NodeContext,
                                                                      tmp_path: Path) -> None:
    model = tmp_path / "m.dcmcr"
    stage = InferenceStage(node, {"a": model, "raw": None, "unknown": None},
                           {"raw": "inference off for site raw: broken"}, "cpu")
    for number in range(BATCH_STUDIES + 1):
        _transcoded_study(node, f"2.{number}")
    _transcoded_study(node, "3.1", site="raw")
    stage.step(accepting=True)
    batches = node.queue.submitted
    assert [len(task.studies) for task in batches] == [BATCH_STUDIES, 1]
    assert all(isinstance(t, InferenceTask) and t.model == model for t in batches)
    assert batches[0].studies[0].out == node.storage.derived_of("2.0")
    assert node.store.study_states() == {StudyState.QUEUED: BATCH_STUDIES + 1,
                                         StudyState.SKIPPED: 1}
    sc = node.storage.derived_of("2.0") / "sc.dcm"
    sc.parent.mkdir(parents=True)
    sc.write_bytes(b"sc")
    node.queue.finish(TaskKind.INFER, InferenceResult(
        "2.0", Outcome.DONE, (DerivedObject("9.1", "1.2.840.10008.5.1.4.1.1.7", sc),),
        {"L": 0.2, "R": 0.7}, 1.0))
    node.queue.finish(TaskKind.INFER, InferenceResult("2.1", Outcome.FAILED, error="no breast"))
    stage.step(accepting=False)
    derived = [j for j in node.store.to_forward(50) if j.kind is ObjectKind.DERIVED]
    assert [(j.uid, j.outputs) for j in derived] == [("9.1", (sc,))]
    states = node.store.study_states()
    assert (states[StudyState.INFERRED], states[StudyState.FAILED]) == (1, 1)
    assert {f.uid: f.error for f in node.store.failures()} == {"2.1": "no breast"}
    assert node.wakes[Loop.FORWARD].is_set()


def test_a_study_of_a_site_without_a_model_is_not_left_waiting(node: NodeContext) -> None:
    _receive(node, "1.1", study="1.9", skipped="site a has no model")
    assert node.store.study_states() == {StudyState.SKIPPED: 1}


# -- forward -----------------------------------------------------------------------------------
def test_forward_delivers_into_the_archive_and_retries_what_failed(node: NodeContext,
                                                                  tmp_path: Path) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset

    def dicom(path: Path, sop: str) -> Path:
        ds = pydicom.Dataset()
        ds.StudyInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = "1.9", sop, MG
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return path

    stage = ForwardStage(node)
    _receive(node, "1.1")
    node.store.transcoded("1.1", [dicom(node.storage.outputs_of("1.1") / "20" / "i.dcm", "5.1")])
    stage.step(accepting=True)
    assert (tmp_path / "archive" / "1.9" / "5.1.dcm").is_file()
    assert _state(node, "1.1") is InstanceState.DONE and node.metrics.counts["forwarded"] == 1

    _receive(node, "1.2")
    node.store.transcoded("1.2", [dicom(node.storage.outputs_of("1.2") / "20" / "i.dcm", "5.2")])
    blocked = tmp_path / "archive" / "1.9" / "5.2.dcm"
    blocked.mkdir()  # a folder where the file should go: the archive cannot take it
    stage.step(accepting=True)
    assert _state(node, "1.2") is InstanceState.TRANSCODED
    assert node.store.to_forward(5) == [] and node.store.next_due(InstanceState.TRANSCODED)
    assert stage.warnings() and "destination archive unreachable" in stage.warnings()[0]


# -- retention ---------------------------------------------------------------------------------
def test_retention_deletes_only_what_was_delivered_long_enough_ago(node: NodeContext) -> None:
    for uid in ("1.1", "1.2"):
        _receive(node, uid)
        node.store.transcoded(uid, [_output(node, uid)])
    node.store.done("1.1")
    stage = RetentionStage(node, days=1 / 86400 / 100)  # 1 ms: everything delivered is old
    time.sleep(0.01)
    stage.step(accepting=True)
    assert not node.storage.spooled("1.1").exists()
    assert not node.storage.outputs_of("1.1").exists()  # its files, and the folders left empty
    assert node.storage.spooled("1.2").exists() and node.storage.outputs_of("1.2").exists()
    assert node.metrics.counts["purged"] == 1
    assert node.store.delivered_before(time.time() + 1) == []


# -- receive -----------------------------------------------------------------------------------
def test_a_stored_instance_wakes_the_transcode_stage(node: NodeContext, small_cohort: Path) -> None:
    import pydicom

    from dicomcr.jobs import DiskReserve

    source = sorted(small_cohort.rglob("LCC.dcm"))[0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    node.storage.incoming.mkdir(parents=True)
    received = node.storage.incoming / "x.dcm"
    received.write_bytes(source.read_bytes())
    stage = ReceiveStage(node, DiskReserve(node.storage.root, 0),
                         skipped=lambda site: f"site {site} has no model")
    event = SimpleNamespace(
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="MG_A")),
        request=SimpleNamespace(AffectedSOPInstanceUID=ds.SOPInstanceUID,
                                AffectedSOPClassUID=ds.SOPClassUID),
        dataset_path=str(received))
    assert stage._on_store(event) == SUCCESS
    assert node.wakes[Loop.TRANSCODE].is_set()
    (job,) = node.store.to_transcode(5)
    assert job.uid == ds.SOPInstanceUID and job.site == "a"
    assert node.store.study_states() == {StudyState.SKIPPED: 1}


# -- sleeping until woken ----------------------------------------------------------------------
def test_an_idle_stage_sleeps_until_woken(node: NodeContext,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "IDLE_CHECK_SECONDS", 30.0)
    stage = TranscodeStage(node)
    threading.Timer(0.1, node.wake, args=(Loop.TRANSCODE,)).start()
    start = time.monotonic()
    stage.step(accepting=True)  # nothing to do: sleeps until the wake-up, not the idle check
    assert time.monotonic() - start < 10


# -- the node's health while it starts ---------------------------------------------------------
def test_healthz_is_not_ok_before_every_loop_runs(tmp_path: Path) -> None:
    from peers import free_port

    from services.node import Node

    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"node": {
        "host": "127.0.0.1", "port": free_port(), "http_port": 0, "workers": 1,
        "storage": str(tmp_path / "data"), "disk_reserve_mb": 0}}))
    node = Node(load_config(config))
    health = node.health()
    assert (health["status"], health["loops"]) == ("starting", {})  # answered 503
    node.start()
    try:
        health = node.health()
        assert health["status"] == "ok"
        assert health["loops"] == {"transcode": "running", "forward": "running"}
    finally:
        node.stop()


# -- what the operator page reads --------------------------------------------------------------
def test_the_store_keeps_the_achieved_cr_and_the_probabilities(node: NodeContext,
                                                              tmp_path: Path) -> None:
    transcode = TranscodeStage(node)
    infer = InferenceStage(node, {"a": tmp_path / "m.dcmcr", "raw": None, "unknown": None}, {},
                           "cpu")
    for view in range(4):
        _receive(node, f"1.{view}")
    transcode.step(accepting=True)
    for view, cr in enumerate((19.5, 20.1, 20.4, 21.0)):
        node.queue.finish(TaskKind.TRANSCODE, TranscodeResult(
            f"1.{view}", Outcome.DONE, (_output(node, f"1.{view}"),), cr))
    transcode.step(accepting=True)
    infer.step(accepting=True)
    node.queue.finish(TaskKind.INFER, InferenceResult("1.9", Outcome.DONE, (),
                                                      {"L": 0.25, "R": 0.75}))
    infer.step(accepting=True)
    achieved = node.store.achieved_crs()["a"]
    assert (achieved.images, achieved.minimum, achieved.median, achieved.maximum) == (
        4, 19.5, 20.25, 21.0)
    (study,) = node.store.recent_studies()
    assert (study.uid, study.state, study.probabilities) == ("1.9", StudyState.INFERRED,
                                                            {"L": 0.25, "R": 0.75})
    assert [(i.uid, i.achieved_cr) for i in study.instances] == [
        ("1.0", 19.5), ("1.1", 20.1), ("1.2", 20.4), ("1.3", 21.0)]


def test_retention_keeps_the_files_of_an_image_sent_again(node: NodeContext) -> None:
    """An object delivered long ago is sent again just before the sweep: its new source (same
    path, same UID) is not deleted, and the row is not marked purged."""
    from dicomcr.jobs.retention import purge_delivered

    _receive(node, "1.1")
    node.store.transcoded("1.1", [_output(node, "1.1")])
    node.store.done("1.1")
    (old,) = node.store.delivered_before(time.time() + 1)
    _receive(node, "1.1")  # sent again: a new file at the same spool path, the row received
    node.store.delivered_before = lambda *_: [old]  # the sweep's list, read before the re-send
    assert purge_delivered(node.store, node.storage, 0.0, node.uid_locks) == 0
    assert node.storage.spooled("1.1").exists()
    assert _state(node, "1.1") is InstanceState.RECEIVED
