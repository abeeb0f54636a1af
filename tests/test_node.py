"""The node end to end, with real peers: DCMTK's storescu and echoscu in, Orthanc as the PACS."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml
from peers import Orthanc, free_port, require, wait_for_port
from typer.testing import CliRunner

from dicomcr.data.dataset import PHANTOM_DICOM
from services.cli import app

MG_A, MG_B = "MG_A", "PACS_B"
runner = CliRunner()


STARTED: list[NodeProcess] = []


@pytest.fixture(autouse=True)
def _no_node_outlives_its_test() -> Iterator[None]:
    yield
    while STARTED:
        node = STARTED.pop()
        node.kill_group()


class NodeProcess:
    """`dicomcr serve` in its own process, as an administrator runs it."""

    def __init__(self, folder: Path, destination: dict, sites: list[dict] | None = None,
                 **node: object) -> None:
        self.folder = folder
        self.port = free_port()
        self.http_port = int(node.get("http_port", 0))  # 0: none, or one the node picks
        self.config = folder / "node.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump({
            "node": {"ae_title": "DICOMCR", "host": "127.0.0.1", "port": self.port,
                     "storage": str(folder / "data"), "http_port": 0, "workers": 2, **node},
            "sites": sites or [{"name": "hospital-a", "calling_ae": [MG_A], "cr": 20},
                               {"name": "hospital-b", "calling_ae": [MG_B], "cr": 100}],
            "destinations": {"pacs": destination},
            "forward": {"to": "pacs", "retry_initial_seconds": 0.5, "retry_max_seconds": 2},
        }))
        self.start()

    def start(self) -> None:
        self.log = open(self.folder / "node.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        STARTED.append(self)
        wait_for_port(self.port, self.process, timeout=30)
        if self.http_port:  # /healthz comes up just after the DICOM port
            wait_for_port(self.http_port, self.process, timeout=30)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.log.close()
        return code

    def kill(self) -> None:
        """SIGKILL the node and its transcoding workers, as systemd kills a unit's processes."""
        self.kill_group()
        self.log.close()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def storescu(port: int, calling: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([require("storescu"), "-aec", "DICOMCR", "-aet", calling, "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True, timeout=120)


def echoscu(port: int, calling: str = MG_A) -> int:
    return subprocess.run([require("echoscu"), "-aec", "DICOMCR", "-aet", calling, "127.0.0.1",
                           str(port)], capture_output=True, timeout=30).returncode


def _http(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def _study(cohort: Path, index: int = 0) -> list[Path]:
    folder = sorted((cohort / PHANTOM_DICOM).iterdir())[index]
    return sorted(folder.glob("*.dcm"))


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


def _pacs(orthanc: Orthanc) -> dict:
    return {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": orthanc.aet}


def test_a_study_arrives_in_orthanc_as_jpeg2000_at_the_sites_cr(
        small_cohort: Path, orthanc: Orthanc, tmp_path: Path) -> None:
    http_port = free_port()
    node = NodeProcess(tmp_path / "node", _pacs(orthanc), http_port=http_port)
    try:
        assert echoscu(node.port) == 0
        files = _study(small_cohort)
        sent = storescu(node.port, MG_A, *files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stored = orthanc.wait_for(4)
        sources = {pydicom.dcmread(p).SOPInstanceUID for p in files}
        for tags in stored:
            assert tags["TransferSyntax"] == "1.2.840.10008.1.2.4.91"
            assert tags["LossyImageCompression"] == "01"
            assert float(tags["LossyImageCompressionRatio"]) == pytest.approx(20, rel=0.02)
            assert tags["ImageType"].startswith("DERIVED")
            assert tags["SOPInstanceUID"] not in sources  # a lossy image is a new image
        deadline = time.monotonic() + 30  # Orthanc has them; the node marks them done after
        while True:
            status = runner.invoke(app, ["status", "--config", str(node.config)])
            assert status.exit_code == 0 and "hospital-a" in status.output
            if "queue depth: 0" in status.output or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert "queue depth: 0" in status.output
        health = json.loads(_http(http_port, "/healthz"))
        assert health["status"] == "ok" and health["queue_depth"] == 0
        metrics = _http(http_port, "/metrics")
        for line in ("dicomcr_received_total 4", "dicomcr_transcoded_total 4",
                     "dicomcr_forwarded_total 4", "dicomcr_queue_depth 0",
                     'dicomcr_instances{site="hospital-a",kind="image",state="done"} 4',
                     'dicomcr_stage_seconds_count{stage="receive"} 4'):
            assert line in metrics.splitlines(), line
    finally:
        assert node.terminate() == 0  # SIGTERM drains and exits 0


def test_unknown_ae_and_bad_instances_are_refused_and_the_node_keeps_serving(
        small_cohort: Path, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", {"folder": str(tmp_path / "archive")})
    try:
        files = _study(small_cohort)
        refused = storescu(node.port, "NOBODY", files[0])
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        broken = tmp_path / "nopixels.dcm"
        ds = pydicom.dcmread(files[0])
        del ds.PixelData
        ds.save_as(broken, enforce_file_format=True)
        failed = storescu(node.port, MG_A, broken)
        assert "0xc000" in (failed.stdout + failed.stderr).lower() or failed.returncode != 0
        reasons = list((tmp_path / "node" / "data" / "quarantine").glob("*.reason.txt"))
        assert len(reasons) == 1 and "no Pixel Data" in reasons[0].read_text()
        assert echoscu(node.port) == 0  # still serving
        assert storescu(node.port, MG_A, *files).returncode == 0
        deadline = time.monotonic() + 60
        while len(list((tmp_path / "archive").rglob("*.dcm"))) < 4:
            assert time.monotonic() < deadline, "the archive folder did not receive 4 images"
            time.sleep(0.25)
    finally:
        assert node.terminate() == 0


def test_destination_down_then_up_and_a_killed_node_loses_nothing(
        small_cohort: Path, tmp_path: Path) -> None:
    port = free_port()  # Orthanc will come up here later
    http_port = free_port()
    node = NodeProcess(tmp_path / "node", {"host": "127.0.0.1", "port": port,
                                            "ae_title": "ORTHANC"}, http_port=http_port)
    files = _study(small_cohort, 1)
    assert storescu(node.port, MG_B, *files).returncode == 0
    time.sleep(2)  # transcoded, forwarding fails and is retried
    node.kill()  # SIGKILL: every acknowledged instance must survive it
    node.start()

    def said() -> list[str]:
        return json.loads(_http(http_port, "/healthz"))["warnings"]

    # The destination down: /healthz says so, and what waits. The warning comes with the first
    # failed try, which may precede the last transcode on a loaded machine: wait for all four.
    deadline = time.monotonic() + 60
    while not any("destination pacs unreachable" in w and "4 objects waiting" in w
                  for w in said()):
        assert time.monotonic() < deadline, said()
        time.sleep(0.25)
    (warning,) = said()
    assert "4 objects waiting, the oldest received" in warning and "retries so far" in warning
    assert 'dicomcr_destination_up{destination="pacs"} 0' in _http(http_port, "/metrics")
    pacs = Orthanc(tmp_path / "orthanc", dicom_port=port)
    try:
        stored = pacs.wait_for(4)
        time.sleep(2)
        assert len(pacs.get("/instances")) == 4  # once each
        for tags in stored:
            assert float(tags["LossyImageCompressionRatio"]) == pytest.approx(100, rel=0.02)
        assert said() == []
        assert 'dicomcr_destination_up{destination="pacs"} 1' in _http(http_port, "/metrics")
    finally:
        pacs.stop()
        assert node.terminate() == 0


def test_pass_through_and_lossless_sites(small_cohort: Path, orthanc: Orthanc,
                                         tmp_path: Path) -> None:
    sites = [{"name": "raw", "calling_ae": ["RAW"], "cr": "none"},
             {"name": "archive", "calling_ae": ["ARCH"], "cr": "lossless"}]
    node = NodeProcess(tmp_path / "node", _pacs(orthanc), sites)
    try:
        first, second = _study(small_cohort)[:2]
        assert storescu(node.port, "RAW", first).returncode == 0
        assert storescu(node.port, "ARCH", second).returncode == 0
        stored = {t["SOPInstanceUID"]: t for t in orthanc.wait_for(2)}
        raw = stored[pydicom.dcmread(first).SOPInstanceUID]
        assert raw["TransferSyntax"] == "1.2.840.10008.1.2.1"
        lossless = stored[pydicom.dcmread(second).SOPInstanceUID]
        assert lossless["TransferSyntax"] == "1.2.840.10008.1.2.4.90"
    finally:
        assert node.terminate() == 0


def test_a_bad_configuration_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "node.yaml"
    bad.write_text("node: {port: 99999}\nsites:\n  - {name: a, calling_ae: [MG_A], cr: 0.5}\n"
                   "forward: {to: nowhere}\n")
    result = runner.invoke(app, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: node.port" in result.output and f"{bad}: sites.0.cr" in result.output
    result = runner.invoke(app, ["serve", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "cannot read" in result.output
    assert os.environ.get("DICOMCR_NEVER_SET") is None


def test_tls_associations_work_and_plain_ones_fail_cleanly(tmp_path: Path) -> None:
    openssl = require("openssl")
    key, cert = tmp_path / "node.key", tmp_path / "node.crt"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    node = NodeProcess(tmp_path / "node", {"folder": str(tmp_path / "archive")},
                       tls={"cert": str(cert), "key": str(key), "ca": str(cert)})
    tls = [require("echoscu"), "+tls", str(key), str(cert), "+cf", str(cert), "-aec", "DICOMCR",
           "-aet", MG_A, "127.0.0.1", str(node.port)]
    try:
        assert subprocess.run(tls, capture_output=True, timeout=30).returncode == 0
        # a client that connects and never starts its handshake does not hold up the others
        # (pynetdicom's acceptor thread used to do every handshake itself, and hung on this one)
        with socket.create_connection(("127.0.0.1", node.port)):
            time.sleep(0.5)
            started = time.monotonic()
            assert subprocess.run(tls, capture_output=True, timeout=30).returncode == 0
            assert time.monotonic() - started < 10
        assert echoscu(node.port) != 0  # plain TCP to the TLS port: refused, not hung
        anonymous = [require("echoscu"), "+tla", "-ic", "-aec", "DICOMCR", "-aet", MG_A,
                     "127.0.0.1", str(node.port)]
        assert subprocess.run(anonymous, capture_output=True, timeout=30).returncode != 0
        assert subprocess.run(tls, capture_output=True, timeout=30).returncode == 0  # serving
    finally:
        assert node.terminate() == 0


def test_the_committed_conformance_statement_is_the_generated_one() -> None:
    committed = Path(__file__).resolve().parents[1] / "conformance" / "CONFORMANCE.md"
    result = runner.invoke(app, ["conformance"])
    assert result.exit_code == 0
    assert committed.read_text() == result.output, (
        "conformance/CONFORMANCE.md is stale: run `dicomcr conformance --out "
        "conformance/CONFORMANCE.md` and review the change")


def test_killed_while_receiving_every_acknowledged_instance_arrives(
        small_cohort: Path, orthanc: Orthanc, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", _pacs(orthanc))
    files = sorted((small_cohort / PHANTOM_DICOM).glob("*/*.dcm"))  # 16 images
    sender = subprocess.Popen(
        [require("storescu"), "-v", "-aec", "DICOMCR", "-aet", MG_A, "127.0.0.1",
         str(node.port), *map(str, files)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    acknowledged, current = [], None
    for line in sender.stderr:  # "Sending file: X" ... "Received Store Response (Success)"
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(current)
            if len(acknowledged) == 5:
                node.kill()  # mid-stream
                break
    sender.wait(timeout=60)
    assert 5 <= len(acknowledged) < len(files)
    node.start()
    try:
        uids = {pydicom.dcmread(p).SOPInstanceUID for p in acknowledged}
        stored = orthanc.wait_for(len(uids))
        source_of = {t["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] for t in stored}
        assert uids <= source_of  # every acknowledged instance, transcoded, is in the PACS
        assert len(stored) == len(source_of)  # and once
    finally:
        assert node.terminate() == 0


def test_killed_while_transcoding_resumes_on_restart(orthanc: Orthanc, tmp_path: Path) -> None:
    from dicomcr.phantom import CohortSpec, write_cohort

    write_cohort(CohortSpec(n_studies=1, seed=4, size="full", vendor="hologic"), tmp_path / "in")
    files = sorted((tmp_path / "in" / PHANTOM_DICOM).glob("*/*.dcm"))
    node = NodeProcess(tmp_path / "node", _pacs(orthanc), workers=1)
    assert storescu(node.port, MG_A, *files).returncode == 0
    node.kill()  # one full-size image takes about a second to transcode: three are still queued
    assert len(orthanc.get("/instances")) < 4
    node.start()
    try:
        stored = orthanc.wait_for(4, timeout=120)
        assert len(stored) == 4  # the full four-view study, full size
        for tags in stored:
            assert tags["TransferSyntax"] == "1.2.840.10008.1.2.4.91"
            assert tags["LossyImageCompression"] == "01"
            assert float(tags["LossyImageCompressionRatio"]) == pytest.approx(20, rel=0.02)
    finally:
        assert node.terminate() == 0


def test_sigterm_lets_a_running_association_finish(small_cohort: Path, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", {"folder": str(tmp_path / "archive")})
    files = sorted((small_cohort / PHANTOM_DICOM).glob("*/*.dcm"))
    sender = subprocess.Popen(
        [require("storescu"), "-v", "-aec", "DICOMCR", "-aet", MG_A, "127.0.0.1",
         str(node.port), *map(str, files)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in sender.stderr:
        if "Received Store Response (Success)" in line:
            node.process.send_signal(signal.SIGTERM)  # after the first image, mid-association
            break
    rest = sender.stderr.read()
    assert sender.wait(timeout=60) == 0, rest
    assert rest.count("Received Store Response (Success)") == len(files) - 1
    assert node.process.wait(timeout=60) == 0
    node.log.close()
    spooled = list((tmp_path / "node" / "data" / "spool").glob("*.dcm"))
    assert len(spooled) == len(files)


def test_a_wrong_called_ae_title_is_rejected(small_cohort: Path, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", {"folder": str(tmp_path / "archive")})
    try:
        wrong = subprocess.run([require("echoscu"), "-aec", "SOMEONE", "-aet", MG_A, "127.0.0.1",
                                str(node.port)], capture_output=True, text=True, timeout=30)
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
        assert echoscu(node.port) == 0
    finally:
        assert node.terminate() == 0


def test_killed_while_forwarding_every_instance_arrives_once(
        small_cohort: Path, orthanc: Orthanc, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", _pacs(orthanc))
    files = sorted((small_cohort / PHANTOM_DICOM).glob("*/*.dcm"))
    assert storescu(node.port, MG_A, *files).returncode == 0
    deadline = time.monotonic() + 60
    while not orthanc.get("/instances"):  # the forwarder has started storing into Orthanc
        assert time.monotonic() < deadline
        time.sleep(0.02)
    node.kill()
    node.start()
    try:
        stored = orthanc.wait_for(len(files))
        time.sleep(1)
        assert len(orthanc.get("/instances")) == len(files) == len(stored)
        sources = {t["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] for t in stored}
        assert sources == {pydicom.dcmread(p).SOPInstanceUID for p in files}
    finally:
        assert node.terminate() == 0


def test_retention_deletes_what_was_delivered_and_nothing_else(small_cohort: Path,
                                                               tmp_path: Path) -> None:
    """node.retention_days: a delivered object's files go once it is older than that (here
    about 4 s); the archive keeps its copies (hard links), the job store its rows."""
    archive = tmp_path / "archive"
    node = NodeProcess(tmp_path / "node", {"folder": str(archive)}, retention_days=0.00005)
    data = node.folder / "data"
    try:
        assert storescu(node.port, MG_A, *_study(small_cohort, 0)).returncode == 0
        deadline = time.monotonic() + 60
        while len(list(archive.rglob("*.dcm"))) < 4:
            assert time.monotonic() < deadline, "the study was not archived"
            time.sleep(0.25)
        while list((data / "spool").glob("*.dcm")) or list((data / "out").rglob("*.dcm")):
            assert time.monotonic() < deadline, "delivered files were not deleted"
            time.sleep(0.25)
        for kept in archive.rglob("*.dcm"):  # the archive's own links: whole images still
            assert pydicom.dcmread(kept).pixel_array.size > 0
        status = runner.invoke(app, ["status", "--config", str(node.config)])
        assert status.exit_code == 0 and "queue depth: 0" in status.output, status.output
    finally:
        assert node.terminate() == 0


@pytest.mark.parametrize("taken", ["port", "http_port"])
def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, taken: str) -> None:
    """`dicomcr serve` where another program listens on its DICOM or HTTP port: one line that
    names the port and the key, exit status 2, nothing left running (it used to end in a
    100-line traceback)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ports = {"port": free_port(), "http_port": free_port(), taken: holder.getsockname()[1]}
        config = tmp_path / "node.yaml"
        config.write_text(yaml.safe_dump({"node": {"host": "127.0.0.1", **ports,
                                                   "storage": str(tmp_path / "data")}}))
        run = subprocess.run([sys.executable, "-m", "services.cli", "serve", "--config",
                              str(config)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    said = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(said) == 1 and f"(node.{taken})" in said[0], run.stderr
    assert f":{ports[taken]} " in said[0] and "Traceback" not in run.stderr
    assert "in use" in said[0]
