"""The SCU over TLS (`dicomcr echo`/`send --tls-*`, a destination's `tls:`) against DCMTK's
`storescp +tls`, and a peer that accepts no presentation context said by name; real peers on
loopback, certificates made by openssl in the test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from peers import free_port, require, stop, wait_for_port
from test_node import MG_A, STARTED, NodeProcess, storescu
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.config import ConfigError, load_config
from dicomcr.data.dataset import PHANTOM_DICOM
from dicomcr.net.scu import ClientTLS, NetworkError, Peer, echo
from dicomcr.transcode import transcode_file
from services.stages.forward import _client_tls

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_node_outlives_its_test() -> Iterator[None]:
    yield
    while STARTED:
        STARTED.pop().kill_group()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Self-signed certificates (each its own CA): the peer's, ours, and an unrelated one."""
    openssl, folder = require("openssl"), tmp_path_factory.mktemp("certs")
    made = {}
    for name in ("server", "client", "other"):
        key, cert = folder / f"{name}.key", folder / f"{name}.crt"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        made[f"{name}.key"], made[f"{name}.crt"] = key, cert
    return made


class DcmtkSCP:
    """DCMTK's storescp on a free loopback port, with the options given (no +xa unless asked)."""

    def __init__(self, folder: Path, *options: str) -> None:
        self.folder, self.port, self.aet = folder, free_port(), "STORESCP"
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [require("storescp"), "--aetitle", self.aet, "--output-directory", str(folder),
             *options, str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_port(self.port, self.process)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture
def tls_scp(tmp_path: Path, certs: dict[str, Path]) -> Iterator[DcmtkSCP]:
    """storescp +tls, requiring a client certificate signed by client.crt, accepting J2K too."""
    scp = DcmtkSCP(tmp_path / "received", "+tls", str(certs["server.key"]),
                   str(certs["server.crt"]), "+cf", str(certs["client.crt"]), "+xa")
    yield scp
    scp.stop()


def _tls(certs: dict[str, Path], ca: str = "server.crt", client: str | None = "client") -> list:
    options = ["--tls-ca", str(certs[ca])]
    if client:
        options += ["--tls-cert", str(certs[f"{client}.crt"]),
                    "--tls-key", str(certs[f"{client}.key"])]
    return options


def _said(output: str) -> str:
    return " ".join(output.split())


def _study(cohort: Path) -> list[Path]:
    return sorted(sorted((cohort / PHANTOM_DICOM).iterdir())[0].glob("*.dcm"))


def test_echo_and_send_over_tls_with_the_peers_ca(small_cohort: Path, tls_scp: DcmtkSCP,
                                                  certs: dict[str, Path]) -> None:
    result = runner.invoke(app, ["echo", tls_scp.address, "--aet", tls_scp.aet, *_tls(certs)])
    assert result.exit_code == 0, result.output
    assert "success" in result.output
    files = _study(small_cohort)
    result = runner.invoke(app, ["send", str(files[0].parent), "--to", tls_scp.address,
                                 "--aet", tls_scp.aet, *_tls(certs)])
    assert result.exit_code == 0, result.output
    assert "stored 4 of 4" in result.output
    got = {pydicom.dcmread(p).SOPInstanceUID for p in tls_scp.received()}
    assert got == {pydicom.dcmread(p).SOPInstanceUID for p in files}


def test_a_failed_handshake_is_said_as_such(small_cohort: Path, tls_scp: DcmtkSCP,
                                            certs: dict[str, Path]) -> None:
    where = f"TLS handshake with {tls_scp.address} failed"
    wrong_ca = runner.invoke(app, ["echo", tls_scp.address, "--aet", tls_scp.aet,
                                   *_tls(certs, ca="other.crt")])
    assert wrong_ca.exit_code == 2
    said = _said(wrong_ca.output)
    assert f"{where}: certificate verify failed" in said and "other.crt" in said
    sent = runner.invoke(app, ["send", str(_study(small_cohort)[0]), "--to", tls_scp.address,
                               "--aet", tls_scp.aet, *_tls(certs, ca="other.crt")])
    assert sent.exit_code == 2 and f"{where}: certificate verify failed" in _said(sent.output)
    # the peer requires a client certificate: none, then one it does not trust
    anonymous = runner.invoke(app, ["echo", tls_scp.address, "--aet", tls_scp.aet,
                                    *_tls(certs, client=None)])
    assert anonymous.exit_code == 2 and where in _said(anonymous.output)
    assert "alert" in anonymous.output
    untrusted = runner.invoke(app, ["echo", tls_scp.address, "--aet", tls_scp.aet,
                                    *_tls(certs, client="other")])
    assert untrusted.exit_code == 2 and where in _said(untrusted.output)
    assert tls_scp.received() == []
    # and the peer still serves the right client
    assert echo(Peer("127.0.0.1", tls_scp.port, tls_scp.aet, tls=ClientTLS(
        certs["server.crt"], certs["client.crt"], certs["client.key"]))) == 0


def test_tls_on_one_side_only_is_said_as_such(tmp_path: Path, tls_scp: DcmtkSCP,
                                              certs: dict[str, Path]) -> None:
    plain_to_tls = runner.invoke(app, ["echo", tls_scp.address, "--aet", tls_scp.aet])
    assert plain_to_tls.exit_code == 2
    assert f"{tls_scp.address} speaks TLS and this association was plain TCP" in \
        _said(plain_to_tls.output)
    plain = DcmtkSCP(tmp_path / "plain")
    try:
        tls_to_plain = runner.invoke(app, ["echo", plain.address, "--aet", plain.aet,
                                           *_tls(certs)])
        assert tls_to_plain.exit_code == 2
        said = _said(tls_to_plain.output)
        assert f"TLS handshake with {plain.address} failed" in said
        assert "does it speak TLS on this port?" in said
    finally:
        plain.stop()


def test_bad_tls_options_are_refused_before_any_work(tmp_path: Path,
                                                     certs: dict[str, Path]) -> None:
    address = f"127.0.0.1:{free_port()}"  # nobody: the options are refused before connecting
    alone = runner.invoke(app, ["echo", address, "--aet", "X", "--tls-cert",
                                str(certs["client.crt"])])
    assert alone.exit_code == 2 and "give both or neither" in _said(alone.output)
    missing = runner.invoke(app, ["send", str(tmp_path), "--to", address, "--aet", "X",
                                  "--tls-ca", str(tmp_path / "nope.crt")])
    said = _said(missing.output)
    assert missing.exit_code == 2 and f"cannot use the TLS CA file {tmp_path / 'nope.crt'}" in said
    mismatched = runner.invoke(app, ["echo", address, "--aet", "X", "--tls-cert",
                                     str(certs["client.crt"]), "--tls-key",
                                     str(certs["other.key"])])
    assert mismatched.exit_code == 2 and "key values mismatch" in _said(mismatched.output)
    with pytest.raises(NetworkError, match="cannot connect"):
        echo(Peer.parse(address, "X", tls=ClientTLS(certs["server.crt"])))


def test_a_destinations_tls_is_validated_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    for tls, said in (("{cert: a.crt}", "destinations.pacs.tls: Value error, cert and key go "
                                        "together"),
                      ("{ca: a.crt, password: x}", "destinations.pacs.tls.password: Extra inputs "
                                                   "are not permitted (got 'x'); a destination's "
                                                   "tls takes ca, cert, key, verify_hostname")):
        config.write_text(f"destinations:\n  pacs: {{host: h, port: 104, ae_title: P, tls: {tls}}}"
                          f"\nforward: {{to: pacs}}\n")
        with pytest.raises(ConfigError) as raised:
            load_config(config)
        assert f"{config}: {said}" in str(raised.value)
    config.write_text("destinations:\n  pacs: {host: h, port: 104, ae_title: P, tls: {ca: a.crt, "
                      "cert: c.crt, key: c.key}}\nforward: {to: pacs}\n")
    destination = load_config(config).destinations["pacs"]
    assert _client_tls(destination) == ClientTLS(Path("a.crt"), Path("c.crt"), Path("c.key"))


def test_the_node_forwards_to_a_tls_destination(small_cohort: Path, tls_scp: DcmtkSCP,
                                                certs: dict[str, Path], tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", {
        "host": "127.0.0.1", "port": tls_scp.port, "ae_title": tls_scp.aet,
        "tls": {"ca": str(certs["server.crt"]), "cert": str(certs["client.crt"]),
                "key": str(certs["client.key"])}})
    try:
        sent = storescu(node.port, MG_A, *_study(small_cohort))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.monotonic() + 60
        while len(tls_scp.received()) < 4 and time.monotonic() < deadline:
            time.sleep(0.25)
        received = [pydicom.dcmread(p) for p in tls_scp.received()]
        assert len(received) == 4, (tmp_path / "node" / "node.log").read_text()[-3000:]
        assert {ds.file_meta.TransferSyntaxUID for ds in received} == {"1.2.840.10008.1.2.4.91"}
    finally:
        assert node.terminate() == 0


def test_a_peer_that_accepts_no_context_for_a_file_is_said_by_name(
        small_cohort: Path, tmp_path: Path) -> None:
    """DCMTK's storescp by default accepts uncompressed images only: a JPEG 2000 file is not
    sent, and the message names its SOP class and transfer syntax."""
    source = _study(small_cohort)[0]
    j2k = transcode_file(source, tmp_path / "j2k", Path("x.dcm"), [20])[0].output
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a-j2k.dcm").write_bytes(j2k.read_bytes())
    (folder / "b-native.dcm").write_bytes(source.read_bytes())
    sop = pydicom.dcmread(source).SOPClassUID.name
    refusal = f"{sop} in JPEG 2000 Image Compression: it may not accept compressed images"
    scp = DcmtkSCP(tmp_path / "received")  # no +xa
    try:
        mixed = runner.invoke(app, ["send", str(folder), "--to", scp.address, "--aet", scp.aet])
        said = _said(mixed.output)
        assert mixed.exit_code == 1, mixed.output
        assert f"a-j2k.dcm: the peer accepted no presentation context for {refusal}" in said
        assert "stored 1 of 2" in said
        assert len(scp.received()) == 1
        alone = runner.invoke(app, ["send", str(j2k), "--to", scp.address, "--aet", scp.aet])
        said = _said(alone.output)
        assert alone.exit_code == 2, alone.output
        assert "accepted no presentation context of those offered" in said and refusal in said
        assert "aborted" not in said
    finally:
        scp.stop()
