"""Faults that must never stall the node, made for real: SIGKILLed worker processes, a job store
that breaks under a running node, a full file system (a tmpfs mounted by the test), and an image
whose Image Pixel module lies. Real peers: DCMTK's storescu in, Orthanc as the PACS."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import pydicom
import pytest
from peers import Orthanc, free_port, require
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from test_inference import model  # noqa: F401  (the fixture: a small CNN3 model file)
from test_node import MG_A, NodeProcess, _pacs, echoscu, runner, storescu

from services.cli import app
from services.node import EXIT_LOOP_FAILED

ENCODER, INFERENCE = "dicomcr-encode", "dicomcr-infer"  # the worker processes' names
SC, SR = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33"
ARCH = "ARCH_C"  # a lossless site: its outputs are large enough to meet a small disk


def _studies(cohort: Path) -> list[list[Path]]:
    """The four views of each study in a phantom cohort, study by study."""
    folders = sorted({path.parent for path in cohort.rglob("*.dcm")})
    return [sorted(folder.glob("*.dcm")) for folder in folders]


@pytest.fixture(scope="module")
def full_size(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """Two full-size Hologic studies (8 images of 27 MB): an encode lasts about a second."""
    from dicomcr.phantom import CohortSpec, write_cohort

    out = tmp_path_factory.mktemp("full-size")
    write_cohort(CohortSpec(n_studies=2, seed=4, size="full", vendor="hologic"), out)
    return _studies(out)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc as the PACS, as test_node's fixture (imported, ruff reads each argument of that
    name as a redefinition, F811)."""
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


def _health(port: int) -> tuple[int, dict]:
    """/healthz: the HTTP status and the report."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _metrics(port: int) -> dict[str, float]:
    """/metrics as {sample: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def _workers(parent: int, name: str) -> list[int]:
    """PIDs of the children of `parent` named `name` (a worker names itself once started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            comm = text[text.index("(") + 1:text.rindex(")")]
            ppid = int(text[text.rindex(")") + 2:].split()[1])
            if ppid == parent and comm == name:
                found.append(int(stat.parent.name))
    return found


def _a_worker(node: NodeProcess, name: str, spared: Collection[int] = (),
              after: float = 0.4, timeout: float = 60) -> int:
    """The PID of a worker of `node` named `name` (not one in `spared`), `after` seconds into its
    work: it names itself when it starts, and takes its job at once."""
    deadline = time.monotonic() + timeout
    while not (pids := [p for p in _workers(node.process.pid, name) if p not in spared]):
        assert time.monotonic() < deadline, f"no {name} process under the node"
        assert node.process.poll() is None, "the node exited"
        time.sleep(0.02)
    time.sleep(after)
    return pids[0]


def _kill_a_worker(node: NodeProcess, name: str, spared: Collection[int] = (),
                   after: float = 0.4) -> int:
    """SIGKILL a worker `after` seconds into its work (see _a_worker); its PID."""
    pid = _a_worker(node, name, spared, after)
    os.kill(pid, signal.SIGKILL)
    return pid


def _sources(orthanc: Orthanc) -> list[str]:
    """The SOP Instance UID each image in Orthanc was made from (a lossless image keeps its
    own), one entry per instance."""
    return [tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"]
            if "SourceImageSequence" in tags else tags["SOPInstanceUID"]
            for tags in orthanc.instances() if tags["SOPClassUID"] not in (SC, SR)]


def _uids(files: list[Path]) -> list[str]:
    return sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def _job(node: NodeProcess, uid: str) -> tuple[str, str, str]:
    """(state, error, spool_path) of an instance in the node's job store."""
    with contextlib.closing(sqlite3.connect(node.folder / "data" / "jobs.sqlite")) as db:
        return db.execute("SELECT state, error, spool_path FROM instances "
                          "WHERE sop_instance_uid=?", (uid,)).fetchone()


def test_a_killed_transcoding_worker_costs_a_retry_not_an_image(
        full_size: list[list[Path]], orthanc: Orthanc, tmp_path: Path) -> None:
    """The issue's case: two workers, a study, one worker SIGKILLed mid-encode, a second study.
    Before: BrokenProcessPool ended the transcode loop and 0 of 8 images reached Orthanc."""
    http_port = free_port()
    node = NodeProcess(tmp_path / "node", _pacs(orthanc), http_port=http_port, workers=2)
    first, second = full_size
    try:
        assert storescu(node.port, MG_A, *first).returncode == 0
        _kill_a_worker(node, ENCODER)
        assert storescu(node.port, MG_A, *second).returncode == 0
        orthanc.wait_for(8, timeout=120)
        time.sleep(1)  # anything sent twice would arrive now
        assert sorted(_sources(orthanc)) == _uids(first + second)  # all eight, once each
        _wait(lambda: _health(http_port)[1]["queue_depth"] == 0, "the queue did not drain")
        code, health = _health(http_port)
        assert code == 200 and health["status"] == "ok", health
        metrics = _metrics(http_port)
        assert metrics["dicomcr_transcode_worker_deaths_total"] == 1
        assert metrics["dicomcr_failed_total"] == 0
        assert metrics['dicomcr_loop_up{loop="transcode"}'] == 1
    finally:
        assert node.terminate() == 0


def test_a_job_that_kills_its_worker_three_times_fails_into_quarantine(
        full_size: list[list[Path]], tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    node = NodeProcess(tmp_path / "node", {"folder": str(archive)}, workers=1)
    poison, other = full_size[0][0], full_size[1][0]
    uid = _uids([poison])[0]
    try:
        assert storescu(node.port, MG_A, poison).returncode == 0
        killed: set[int] = set()
        for _ in range(3):  # the default node.max_worker_deaths
            killed.add(_kill_a_worker(node, ENCODER, spared=killed))
        _wait(lambda: _job(node, uid)[0] == "failed", "the job was not failed")
        _, error, where = _job(node, uid)
        assert error == "worker died 3 times"
        quarantined = Path(where)
        assert quarantined.parent == node.folder / "data" / "quarantine"
        assert _uids([quarantined]) == [uid]  # the source, kept
        assert quarantined.with_suffix(".reason.txt").read_text().strip() == error
        assert storescu(node.port, MG_A, other).returncode == 0  # everything else goes on
        _wait(lambda: len(list(archive.rglob("*.dcm"))) == 1, "the next image did not arrive")
        (arrived,) = archive.rglob("*.dcm")
        made = pydicom.dcmread(arrived)
        assert made.SourceImageSequence[0].ReferencedSOPInstanceUID == _uids([other])[0]
        # one naming scheme for an archive: <Study Instance UID>/<SOP Instance UID>.dcm
        assert arrived == archive / made.StudyInstanceUID / f"{made.SOPInstanceUID}.dcm"

        # The operator lists what failed, and gives it another go: its source leaves quarantine.
        listed = runner.invoke(app, ["status", "--config", str(node.config), "--failed"])
        assert listed.exit_code == 0 and uid in listed.output and error in listed.output
        again = runner.invoke(app, ["retry", uid, "--config", str(node.config)])
        assert again.exit_code == 0 and f"retrying image {uid}" in again.output, again.output
        assert not quarantined.exists() and not list(quarantined.parent.glob("*.reason.txt"))
        _wait(lambda: len(list(archive.rglob("*.dcm"))) == 2, "the retried image did not arrive")
        _wait(lambda: _job(node, uid)[0] == "done", "the retried image was not marked done")
        nothing = runner.invoke(app, ["retry", uid, "--config", str(node.config)])
        assert nothing.exit_code == 2 and "not failed" in nothing.output
    finally:
        assert node.terminate() == 0


def test_workers_stopped_with_the_node_count_no_death(full_size: list[list[Path]],
                                                     tmp_path: Path) -> None:
    """SIGTERM to the whole process group (systemd's default KillMode) ends the workers with the
    node: their jobs stay queued (or the drain redoes them), not charged a death."""
    node = NodeProcess(tmp_path / "node", {"folder": str(tmp_path / "archive")}, workers=1)
    image = full_size[0][0]
    assert storescu(node.port, MG_A, image).returncode == 0
    _a_worker(node, ENCODER, after=0.3)  # mid-encode
    os.killpg(node.process.pid, signal.SIGTERM)
    assert node.process.wait(timeout=60) == 0
    node.log.close()
    with contextlib.closing(sqlite3.connect(node.folder / "data" / "jobs.sqlite")) as db:
        state, deaths = db.execute("SELECT state, worker_deaths FROM instances").fetchone()
    assert deaths == 0 and state in ("received", "transcoded")  # queued, or done in the drain


def test_a_killed_inference_process_classifies_the_study_again(
        small_cohort: Path, model: Path, orthanc: Orthanc, tmp_path: Path) -> None:  # noqa: F811
    http_port = free_port()
    node = NodeProcess(tmp_path / "node", _pacs(orthanc),
                       sites=[{"name": "hospital-a", "calling_ae": [MG_A], "cr": 20,
                               "model": str(model)}], stable_seconds=60, http_port=http_port)
    study = _studies(small_cohort)[3]  # a Hologic study: its crops fit the model's canvas
    try:
        assert storescu(node.port, MG_A, *study).returncode == 0
        # The process starts with the study: killed while it loads torch and the model for it.
        _kill_a_worker(node, INFERENCE, after=0.5)
        stored = orthanc.wait_for(9, timeout=120)  # 4 images, 4 captures, 1 report
        time.sleep(2)  # anything sent twice would arrive now
        assert len(orthanc.get("/instances")) == 9
        classes = sorted(tags["SOPClassUID"] for tags in stored)
        assert classes.count(SC) == 4 and classes.count(SR) == 1
        assert sorted(_sources(orthanc)) == _uids(study)
        code, health = _health(http_port)
        assert code == 200 and health["studies"] == {"inferred": 1}, health
        assert _metrics(http_port)["dicomcr_inference_worker_deaths_total"] == 1
    finally:
        assert node.terminate() == 0


def test_a_loop_that_dies_answers_503_and_the_node_exits_non_zero(small_cohort: Path,
                                                                   tmp_path: Path) -> None:
    http_port = free_port()
    archive = tmp_path / "archive"
    node = NodeProcess(tmp_path / "node", {"folder": str(archive)}, http_port=http_port,
                       network_timeout=30)
    files = _studies(small_cohort)[0]
    assert storescu(node.port, MG_A, *files).returncode == 0
    _wait(lambda: len(list(archive.rglob("*.dcm"))) == 4, "the study did not arrive")
    assert _health(http_port)[0] == 200
    ae = AE(ae_title=MG_A)
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", node.port, ae_title="DICOMCR")  # keeps the drain waiting
    assert held.is_established
    try:
        # A real fault under the running node: its job store loses the instances table.
        with contextlib.closing(sqlite3.connect(node.folder / "data" / "jobs.sqlite")) as db:
            db.execute("DROP TABLE instances")

        def named() -> bool:  # the store's error shows at once, the loop's at its next turn
            return any(w.startswith("transcode loop stopped") and "no such table: instances" in w
                       for w in _health(http_port)[1]["warnings"])

        _wait(named, "/healthz did not name the transcode loop", timeout=30)
        code, health = _health(http_port)
        assert code == 503 and health["status"] == "failed", health
        assert health["loops"]["transcode"].startswith("transcode loop stopped"), health
        assert node.process.poll() is None  # still draining: the held association runs
    finally:
        held.release()
    assert node.process.wait(timeout=60) == EXIT_LOOP_FAILED  # non-zero: systemd restarts it
    node.log.close()
    assert "transcode loop stopped" in (node.folder / "node.log").read_text()


def test_an_image_whose_pixel_module_lies_is_refused_at_receive(small_cohort: Path,
                                                                 tmp_path: Path) -> None:
    """BitsAllocated 7 used to be acknowledged with Success and fail after the modality was told
    the image was stored."""
    node = NodeProcess(tmp_path / "node", {"folder": str(tmp_path / "archive")})
    good = _studies(small_cohort)[0][0]
    ds = pydicom.dcmread(good)
    ds.BitsAllocated = 7
    bad = tmp_path / "bits7.dcm"
    ds.save_as(bad, enforce_file_format=True)
    try:
        (answer,), output = _send(node.port, MG_A, [bad])
        said = answer[1].lower().replace(" ", "")
        assert "0xa900" in said or "datasetdoesnotmatchsopclass" in said, output
        reasons = list((node.folder / "data" / "quarantine").glob("*.reason.txt"))
        assert len(reasons) == 1
        assert "BitsAllocated 7 is neither 1 nor a multiple of 8" in reasons[0].read_text()
        assert not list((node.folder / "data" / "spool").glob("*.dcm"))  # never acknowledged
        listed = runner.invoke(app, ["status", "--config", str(node.config), "--failed"])
        assert listed.exit_code == 0, listed.output
        assert "refused at receive, never acknowledged" in listed.output
        assert "BitsAllocated 7 is neither 1 nor a multiple of 8" in listed.output
        assert echoscu(node.port) == 0
        assert storescu(node.port, MG_A, good).returncode == 0  # still serving
    finally:
        assert node.terminate() == 0


# -- a full disk ------------------------------------------------------------------------------
@contextlib.contextmanager
def _tmpfs(folder: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB mounted at `folder` for the test (root only); skip where this
    sandbox does not allow mounting."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'not root'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _answers(output: str) -> list[tuple[str, str]]:
    """(file, the status storescu -v reported for it), in order of sending."""
    answers, current = [], None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line and current is not None:
            answers.append((current, line.split("Received Store Response", 1)[1].strip()))
            current = None
    return answers


def _send(port: int, calling: str, files: list[Path]) -> tuple[list[tuple[str, str]], str]:
    """storescu -nh (go on after a failure) -v: each file's answer, and the whole output."""
    sent = subprocess.run([require("storescu"), "-v", "-nh", "-aec", "DICOMCR", "-aet", calling,
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=180)
    output = sent.stdout + sent.stderr
    return _answers(output), output


def _send_all(port: int, calling: str, files: list[Path]) -> tuple[list[Path], list[Path]]:
    """The files acknowledged and those answered Out of Resources, on one association; any
    other answer, or none, fails the test."""
    answers, output = _send(port, calling, files)
    assert [Path(f) for f, _ in answers] == files, output  # every file got a DICOM answer
    assert "Abort" not in output and "Releasing Association" in output, output  # one, kept
    stored = [Path(f) for f, said in answers if "Success" in said]
    refused = [Path(f) for f, said in answers
               if "outofresources" in said.lower().replace(" ", "") or "0xa700" in said.lower()]
    assert len(stored) + len(refused) == len(files), output
    return stored, refused


def test_a_full_disk_answers_out_of_resources_and_delivers_what_it_acknowledged(
        full_size: list[list[Path]], orthanc: Orthanc, tmp_path: Path) -> None:
    """The issue's case: no reserve, eight full-size images into a small file system. Before: two
    acknowledged, none delivered, six without any DICOM answer (the association broke)."""
    http_port = free_port()
    with _tmpfs(tmp_path / "disk", 80) as disk:
        filler = disk / "filler"  # leaves room for two images, not for their lossless outputs
        filler.write_bytes(bytes(24 * 2**20))
        node = NodeProcess(tmp_path / "node", _pacs(orthanc), http_port=http_port, workers=1,
                           storage=str(disk / "data"), disk_reserve_mb=0,
                           sites=[{"name": "archive-c", "calling_ae": [ARCH], "cr": "lossless"}])
        try:
            files = [f for study in full_size for f in study]
            stored, refused = _send_all(node.port, ARCH, files)
            assert len(stored) == 2 and len(refused) == 6
            # the lossless outputs do not fit: a retry later, not a failure
            _wait(lambda: _metrics(http_port)["dicomcr_disk_full_retries_total"] >= 1,
                  "no transcode met the full disk")
            code, health = _health(http_port)
            assert code == 503 and health["status"] == "low_disk" and health["disk"]["low"]
            assert any(w.startswith("disk full") for w in health["warnings"]), health
            assert _metrics(http_port)["dicomcr_disk_low"] == 1
            assert _metrics(http_port)["dicomcr_out_of_space_total"] == 6
            filler.unlink()  # space again
            orthanc.wait_for(2, timeout=120)
            time.sleep(1)
            assert sorted(_sources(orthanc)) == _uids(stored)  # each acknowledged one, once
            metrics = _metrics(http_port)
            assert metrics["dicomcr_failed_total"] == 0
            assert all(metrics[f'dicomcr_loop_up{{loop="{loop}"}}'] == 1
                       for loop in ("transcode", "forward"))
        finally:
            assert node.terminate() == 0


def test_below_the_disk_reserve_instances_are_refused_on_the_same_association(
        full_size: list[list[Path]], orthanc: Orthanc, tmp_path: Path) -> None:
    http_port = free_port()
    with _tmpfs(tmp_path / "disk", 100) as disk:
        taken, more = disk / "taken", disk / "more"  # space the test takes, and gives back
        taken.write_bytes(bytes(40 * 2**20))  # 60 MiB free
        node = NodeProcess(tmp_path / "node", _pacs(orthanc), http_port=http_port,
                           storage=str(disk / "data"), disk_reserve_mb=20)
        try:
            files = [f for study in full_size for f in study]
            stored, refused = _send_all(node.port, MG_A, files)
            assert len(stored) == 1 and len(refused) == 7  # one leaves 34 MiB; two, 8 < 20
            orthanc.wait_for(1, timeout=60)
            assert _health(http_port)[0] == 200  # 33 MiB free with the output: above the reserve
            more.write_bytes(bytes(15 * 2**20))  # now below it
            code, health = _health(http_port)
            assert code == 503 and health["status"] == "low_disk", health
            assert health["disk"]["reserve_mb"] == 20 and health["disk"]["free_mb"] < 20
            assert any(w.startswith("low disk") for w in health["warnings"]), health
            metrics = _metrics(http_port)
            assert metrics["dicomcr_disk_low"] == 1
            assert metrics["dicomcr_disk_reserve_bytes"] == 20 * 2**20
            assert metrics["dicomcr_out_of_space_total"] == 7
            assert echoscu(node.port) == 0
            late, again = _send_all(node.port, MG_A, refused[:1])  # not even written
            assert late == [] and again == refused[:1]
            taken.unlink()
            more.unlink()
            _wait(lambda: _health(http_port)[0] == 200, "/healthz stayed 503 with room again")
            late, again = _send_all(node.port, MG_A, refused[:1])
            assert late == refused[:1]
            orthanc.wait_for(2, timeout=60)
            time.sleep(1)
            assert sorted(_sources(orthanc)) == _uids(stored + late)  # each acknowledged, once
        finally:
            assert node.terminate() == 0


def test_the_fault_settings_have_working_defaults_and_are_checked(tmp_path: Path) -> None:
    from dicomcr.config import Config, ConfigError, load_config

    assert (Config().node.max_worker_deaths, Config().node.disk_reserve_mb) == (3, 1024)
    good = tmp_path / "good.yaml"
    good.write_text("node: {max_worker_deaths: 5, disk_reserve_mb: 0}\n")
    assert (load_config(good).node.max_worker_deaths, load_config(good).node.disk_reserve_mb) \
        == (5, 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {max_worker_deaths: 0, disk_reserve_mb: -1}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(bad)
    assert f"{bad}: node.max_worker_deaths" in str(refused.value)
    assert f"{bad}: node.disk_reserve_mb" in str(refused.value)


def test_a_job_store_from_before_opens_with_the_new_columns(tmp_path: Path) -> None:
    """A node upgraded in place keeps its queue: the death counts are added to the old tables."""
    from dicomcr.config import Policy
    from dicomcr.jobs import JobStore

    path = tmp_path / "jobs.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:  # the tables as the first release made
        db.executescript(
            "CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT NOT "
            "NULL, study_uid TEXT NOT NULL, calling_ae TEXT NOT NULL, site TEXT NOT NULL, policy "
            "TEXT NOT NULL, spool_path TEXT NOT NULL, bytes INTEGER NOT NULL, state TEXT NOT NULL,"
            " outputs TEXT NOT NULL DEFAULT '[]', attempts INTEGER NOT NULL DEFAULT 0, "
            "next_attempt_at REAL NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', received_at "
            "REAL NOT NULL, updated_at REAL NOT NULL);"
            "CREATE TABLE studies (study_uid TEXT PRIMARY KEY, site TEXT NOT NULL, state TEXT NOT "
            "NULL, last_received_at REAL NOT NULL, error TEXT NOT NULL DEFAULT '', updated_at "
            "REAL NOT NULL);")
    store = JobStore(path)
    store.received(sop_instance_uid="1.2.3", sop_class_uid="1.2", study_uid="1.2.4",
                   calling_ae="MG_A", site="a", policy=Policy.parse("20"),
                   spool_path=tmp_path / "x.dcm", size=1)
    assert store.worker_died("1.2.3") == 1 and store.study_worker_died("1.2.4") == 1
    (job,) = store.to_transcode(5)
    assert job.worker_deaths == 1
    store.close()
