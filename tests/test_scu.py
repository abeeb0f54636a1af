"""`dicomcr echo` and `dicomcr send` against DCMTK's storescp, a real peer on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from peers import StoreSCP, free_port, require
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.dataset import PHANTOM_DICOM
from dicomcr.net.scu import Peer, send
from dicomcr.transcode import transcode_file

runner = CliRunner()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    peer = StoreSCP(tmp_path / "received")
    yield peer
    peer.stop()


def _study(cohort: Path) -> list[Path]:
    folder = sorted((cohort / PHANTOM_DICOM).iterdir())[0]
    return sorted(folder.glob("*.dcm"))


def test_echo(storescp: StoreSCP) -> None:
    result = runner.invoke(app, ["echo", storescp.address, "--aet", storescp.aet])
    assert result.exit_code == 0, result.output
    assert "success" in result.output


def test_send_a_study_stores_every_image_unchanged(small_cohort: Path, storescp: StoreSCP) -> None:
    files = _study(small_cohort)
    result = runner.invoke(app, ["send", str(files[0].parent), "--to", storescp.address,
                                 "--aet", storescp.aet, "--calling-aet", "MG_A"])
    assert result.exit_code == 0, result.output
    assert "stored 4 of 4" in result.output
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in storescp.folder.iterdir()}
    for path in files:
        sent = pydicom.dcmread(path)
        got = pydicom.dcmread(received[sent.SOPInstanceUID])
        assert got.PixelData == sent.PixelData
        assert got.PatientID == sent.PatientID


def test_send_compressed_output_of_the_transcoder(small_cohort: Path, storescp: StoreSCP,
                                                   tmp_path: Path) -> None:
    row = transcode_file(_study(small_cohort)[0], tmp_path / "j2k", Path("x.dcm"), [20])[0]
    result = runner.invoke(app, ["send", str(row.output), "--to", storescp.address,
                                 "--aet", storescp.aet])
    assert result.exit_code == 0, result.output
    (received,) = list(storescp.folder.iterdir())
    assert pydicom.dcmread(received).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"


def test_a_bad_file_is_reported_and_the_rest_are_sent(small_cohort: Path, storescp: StoreSCP,
                                                      tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(_study(small_cohort)[0].parent, folder)
    (folder / "broken.dcm").write_bytes(b"not dicom" * 20)
    result = runner.invoke(app, ["send", str(folder), "--to", storescp.address,
                                 "--aet", storescp.aet])
    assert result.exit_code == 1
    assert "broken.dcm" in result.output and "stored 4 of 5" in result.output
    assert "not sent: not a DICOM file (no DICM preamble/header)" in result.output
    assert len(list(storescp.folder.iterdir())) == 4


def test_files_that_cannot_be_sent_are_said_so_in_the_users_words(small_cohort: Path,
                                                                  tmp_path: Path) -> None:
    """No association is opened when no file can go: each one is reported in plain words."""
    notes = tmp_path / "notes.dcm"
    notes.write_text("not an image")
    ds = pydicom.dcmread(_study(small_cohort)[0])
    del ds.SOPInstanceUID
    no_uid = tmp_path / "no_uid.dcm"
    ds.save_as(no_uid, enforce_file_format=False)
    results = list(send(Peer.parse("127.0.0.1:1", "NOBODY"), [notes, no_uid]))
    assert [r.error for r in results] == ["not sent: not a DICOM file (no DICM preamble/header)",
                                          "not sent: no SOPInstanceUID"]


def test_refused_and_unreachable_peers_give_clear_errors(small_cohort: Path, tmp_path: Path):
    refusing = StoreSCP(tmp_path / "refusing", "STORESCP", "--refuse")
    try:
        result = runner.invoke(app, ["send", str(_study(small_cohort)[0]), "--to",
                                     refusing.address, "--aet", "STORESCP"])
        # storescp sends A-ASSOCIATE-RJ and closes at once; pynetdicom sometimes sees the close
        # first and reports an abort. Either way the command says so and exits 2.
        said = ("rejected the association", "aborted the association")
        assert result.exit_code == 2 and any(s in result.output for s in said)
        echo = runner.invoke(app, ["echo", refusing.address, "--aet", "STORESCP"])
        assert echo.exit_code == 2 and any(s in echo.output for s in said)
    finally:
        refusing.stop()
    nobody = f"127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["echo", nobody, "--aet", "ANY"])
    assert result.exit_code == 2 and "cannot connect" in result.output
    assert "refused" in result.output.lower()


def test_bad_addresses_and_titles() -> None:
    for address in ("nohost", "host:port", ":104"):
        result = runner.invoke(app, ["echo", address, "--aet", "X"])
        assert result.exit_code == 2 and "HOST:PORT" in result.output
    with pytest.raises(ValueError, match="called_aet"):
        Peer("127.0.0.1", 104, "A" * 17)
    with pytest.raises(ValueError, match="port"):
        Peer("127.0.0.1", 70000, "X")


def test_the_peers_are_dcmtk_not_pynetdicoms_namesakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom installs storescu/echoscu into the venv's bin; the tests must use DCMTK's."""
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{venv_bin}:{os.environ['PATH']}")
    for tool in ("storescu", "echoscu"):
        run = subprocess.run([require(tool), "--version"], capture_output=True, text=True,
                             timeout=30)
        assert "dcmtk" in (run.stdout + run.stderr).lower(), tool
