"""STOW-RS out: a `dicomweb:` destination, end to end against Orthanc with Debian's DICOMweb plugin
(orthanc-dicomweb 1.7 on Orthanc 1.10): a real node in a subprocess, DCMTK's storescu in.

What Orthanc answers, as these tests meet it:
    every part stored                       200, DICOM JSON, each in ReferencedSOPSequence
    a part Orthanc cannot store (here: no   400, no Content-Type, DICOM JSON: that part in
    Series Instance UID)                    FailedSOPSequence with Failure Reason 0xC000, the
                                            others in ReferencedSOPSequence (and stored)
    a part its Lua ReceivedInstanceFilter   200, DICOM JSON naming only the parts before it: it
    raises an error on                      and every later part are left out, not stored
    (a filter that returns false            200 with the part in ReferencedSOPSequence, and
    instead: not used here)                 nothing stored: a loss no client can see)
    a wrong password                        401, empty body
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from peers import Orthanc, free_port
from pydicom.dataset import Dataset
from test_node import (
    MG_A,
    MG_B,
    NodeProcess,
    _http,
    _no_node_outlives_its_test,  # noqa: F401  (autouse: no node outlives a test)
    _study,
    storescu,
)

from dicomcr.config import ConfigError, load_config
from dicomcr.jobs import JobStore, Storage
from services.dicomweb import REQUEST_BYTES, Part, StoreAnswer, requests_of, results_of

J2K = "1.2.840.10008.1.2.4.91"
URL = "http://pacs.example/dicom-web/studies"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True)
    yield pacs
    pacs.stop()


def _web(orthanc: Orthanc, **more: object) -> dict:
    return {"dicomweb": orthanc.dicomweb_url, **more}


def _warnings(node: NodeProcess) -> list[str]:
    return json.loads(_http(node.http_port, "/healthz"))["warnings"]


def _wait_until(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def _retrying(node: NodeProcess) -> dict[str, str]:
    """The objects waiting for another try, by SOP Instance UID, with the last error."""
    with JobStore.open_readonly(Storage(node.folder / "data").store) as store:
        return {job.sop_instance_uid: error for job, error, _ in store.retrying()}


def test_a_study_reaches_orthanc_over_stow_rs_once(small_cohort: Path, orthanc: Orthanc,
                                                   tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", _web(orthanc), http_port=free_port())
    try:
        files = _study(small_cohort)
        sent = storescu(node.port, MG_A, *files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stored = orthanc.wait_for(4)
        sources = {pydicom.dcmread(p).SOPInstanceUID for p in files}
        for tags in stored:
            assert tags["TransferSyntax"] == J2K
            assert tags["LossyImageCompression"] == "01"
            assert float(tags["LossyImageCompressionRatio"]) == pytest.approx(20, rel=0.02)
            assert tags["ImageType"].startswith("DERIVED")
            assert tags["SOPInstanceUID"] not in sources
        assert {t["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] for t in stored} == sources
        _wait_until("the node did not mark the 4 images done", lambda: "dicomcr_forwarded_total 4"
                    in _http(node.http_port, "/metrics").splitlines())
        time.sleep(1)
        assert len(orthanc.get("/instances")) == 4  # once each
        metrics = _http(node.http_port, "/metrics").splitlines()
        assert 'dicomcr_destination_up{destination="pacs"} 1' in metrics
        assert "dicomcr_forward_retries_total 0" in metrics
        assert _warnings(node) == []
    finally:
        assert node.terminate() == 0


def test_a_stopped_orthanc_is_retried_and_each_object_arrives_once(
        small_cohort: Path, orthanc: Orthanc, tmp_path: Path) -> None:
    orthanc.stop()
    node = NodeProcess(tmp_path / "node", _web(orthanc), http_port=free_port())
    try:
        assert storescu(node.port, MG_B, *_study(small_cohort, 1)).returncode == 0
        _wait_until("/healthz did not say the destination is down", lambda: any(
            "destination pacs unreachable" in w and "4 objects waiting" in w
            for w in _warnings(node)))
        (warning,) = _warnings(node)
        assert f"cannot store at {orthanc.dicomweb_url}/studies" in warning
        assert "Connection refused" in warning
        assert 'dicomcr_destination_up{destination="pacs"} 0' in _http(node.http_port,
                                                                         "/metrics")
        orthanc.start()  # the same Orthanc, on the same port
        stored = orthanc.wait_for(4)
        time.sleep(2)
        assert len(orthanc.get("/instances")) == 4  # once each
        for tags in stored:
            assert tags["TransferSyntax"] == J2K
            assert float(tags["LossyImageCompressionRatio"]) == pytest.approx(100, rel=0.02)
        _wait_until("/healthz still warns", lambda: _warnings(node) == [])
        assert 'dicomcr_destination_up{destination="pacs"} 1' in _http(node.http_port,
                                                                         "/metrics")
    finally:
        assert node.terminate() == 0


def test_instances_orthanc_refuses_are_retried_with_the_reason_and_the_rest_arrive(
        small_cohort: Path, tmp_path: Path) -> None:
    """A pass-through site, so that Orthanc gets the very instances sent: one without a Series
    Instance UID (Orthanc cannot store it: 400, Failure Reason 0xC000) and one that Orthanc's
    Lua filter raises an error on (left out of a 200 answer, with every part after it). Each
    failed object is tried again in a request of its own, so the two good ones arrive."""
    first, filtered, no_series, last = _study(small_cohort, 2)
    broken = pydicom.dcmread(no_series)
    del broken.SeriesInstanceUID
    no_series = tmp_path / "no-series.dcm"
    broken.save_as(no_series)
    uid = {path: str(pydicom.dcmread(path).SOPInstanceUID)
           for path in (first, filtered, no_series, last)}
    lua = (f'function ReceivedInstanceFilter(dicom, origin, info)\n'
           f'  if dicom.SOPInstanceUID == "{uid[filtered]}" then error("not this one") end\n'
           f'  return true\nend\n')
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, lua=[lua])
    node = NodeProcess(tmp_path / "node", _web(orthanc), http_port=free_port(),
                       sites=[{"name": "raw", "calling_ae": ["RAW"], "cr": "none"}])
    try:
        sent = storescu(node.port, "RAW", first, filtered, no_series, last)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stored = orthanc.wait_for(2)
        _wait_until("the object without a series was not tried alone", lambda: "answered 400"
                    in _retrying(node).get(uid[no_series], ""))
        time.sleep(1)
        assert {t["SOPInstanceUID"] for t in stored} == {uid[first], uid[last]}
        assert len(orthanc.get("/instances")) == 2
        retrying = _retrying(node)
        url = f"{orthanc.dicomweb_url}/studies"
        assert retrying[uid[no_series]] == (f"{url} answered 400 Bad Request: failed, Failure "
                                            "Reason 0xC000 (Cannot Understand)")
        assert retrying[uid[filtered]] == f"{url} answered 200 OK without naming it: not stored"
        log = (node.folder / "node.log").read_text()
        assert f"forwarding to pacs failed for {uid[no_series]}: {url} answered 400" in log
        metrics = _http(node.http_port, "/metrics").splitlines()
        assert "dicomcr_forwarded_total 2" in metrics
    finally:
        assert node.terminate() == 0
        orthanc.stop()


def test_basic_auth_is_sent_and_a_wrong_password_is_a_401_said(small_cohort: Path,
                                                               tmp_path: Path) -> None:
    """Orthanc with a registered user: the node logs in with the password read from its file at
    each round, so a corrected file needs no restart; no password is ever written out."""
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, users={"dicomcr": "right-horse"})
    password = tmp_path / "pacs.password"
    password.write_text("wrong-horse\n")
    password.chmod(0o600)
    node = NodeProcess(tmp_path / "node", _web(orthanc, auth={
        "user": "dicomcr", "password_file": str(password)}), http_port=free_port())
    try:
        assert storescu(node.port, MG_A, *_study(small_cohort, 3)).returncode == 0
        _wait_until("/healthz did not say the 401", lambda: any(
            "answered 401 Unauthorized" in w for w in _warnings(node)))
        assert orthanc.get("/instances") == []
        password.write_text("right-horse\n")
        orthanc.wait_for(4)
        _wait_until("/healthz still warns", lambda: _warnings(node) == [])
        time.sleep(1)
        assert len(orthanc.get("/instances")) == 4
    finally:
        assert node.terminate() == 0
        orthanc.stop()
    log = (node.folder / "node.log").read_text()
    assert "answered 401 Unauthorized" in log and "horse" not in log


# -- the answer, read (PS3.18 Annex I shapes) and the requests, grouped -------------------------
def _answer(stored: list[str], failed: dict[str, int]) -> bytes:
    """A Store Instances Response as a STOW-RS server writes it (pydicom's DICOM JSON)."""
    ds = Dataset()
    ds.RetrieveURL = None
    if stored:
        ds.ReferencedSOPSequence = [Dataset() for _ in stored]
        for item, uid in zip(ds.ReferencedSOPSequence, stored, strict=True):
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.3", uid
    if failed:
        ds.FailedSOPSequence = [Dataset() for _ in failed]
        for item, (uid, reason) in zip(ds.FailedSOPSequence, failed.items(), strict=True):
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.3", uid
            item.FailureReason = reason
    return json.dumps(ds.to_json_dict()).encode()


def _parts(*uids: str, size: int = 10) -> list[Part]:
    return [Part(Path(f"/spool/{uid}.dcm"), uid, size) for uid in uids]


def test_a_202_fails_the_instances_it_names_and_stores_the_others() -> None:
    parts = _parts("1.1", "1.2", "1.3")
    results = results_of(parts, 202, "Accepted", _answer(["1.1"], {"1.2": 0xA700}), URL)
    assert [r.ok for r in results] == [True, False, False]
    assert results[1].error == (f"{URL} answered 202 Accepted: failed, Failure Reason 0xA700 "
                                "(Refused: Out of Resources)")
    assert results[2].error == f"{URL} answered 202 Accepted without naming it: not stored"


def test_a_409_or_an_error_without_an_answer_fails_every_instance_with_the_status() -> None:
    parts = _parts("1.1", "1.2")
    conflict = results_of(parts, 409, "Conflict", _answer([], {"1.1": 0xA901, "1.2": 0xC122}),
                          URL)
    assert [r.error for r in conflict] == [
        f"{URL} answered 409 Conflict: failed, Failure Reason 0xA901 (Data Set Does Not Match "
        "SOP Class)",
        f"{URL} answered 409 Conflict: failed, Failure Reason 0xC122 (Referenced Transfer "
        "Syntax not supported)"]
    down = results_of(parts, 503, "Service Unavailable", b"<html>\n  maintenance  </html>", URL)
    assert {r.error for r in down} == {f"{URL} answered 503 Service Unavailable: <html> "
                                       "maintenance </html>"}
    assert not any(r.ok for r in conflict + down)
    assert all(r.ok for r in results_of(parts, 200, "OK", b"", URL))  # 200: all stored
    login = results_of(parts, 200, "OK", b"<html>Sign in</html>", URL)  # but not a web page
    assert {r.error for r in login} == {f"{URL} answered 200 OK: <html>Sign in</html>"}
    assert not any(r.ok for r in results_of(parts, 202, "Accepted", b"", URL))
    assert StoreAnswer.parse(b'{"00081190": {"vr": "UR"}}') is None  # no Store response


def test_requests_are_bounded_and_an_object_tried_before_goes_alone() -> None:
    big = REQUEST_BYTES // 3
    parts = _parts("1.1", "1.2", "1.3", "1.4", size=big) + _parts("1.5", size=REQUEST_BYTES * 2)
    groups = requests_of(parts, alone={Path("/spool/1.2.dcm")})
    assert [[p.sop_instance_uid for p in g] for g in groups] == [
        ["1.2"], ["1.1", "1.3", "1.4"], ["1.5"]]


# -- the destination in node.yaml ----------------------------------------------------------------
@pytest.mark.parametrize(("destination", "said"), [
    ("{dicomweb: 'https://pacs.example/dicom-web/', auth: {token_env: PACS_TOKEN}, "
     "tls: {ca: ca.pem}}", None),
    ("{dicomweb: 'https://me:secret@pacs.example/dicom-web'}",
     "destinations.pacs.dicomweb: Value error, no credentials in the URL"),
    ("{dicomweb: 'pacs.example/dicom-web'}",
     "destinations.pacs.dicomweb: Value error, expected an http:// or https:// URL"),
    ("{dicomweb: 'http://pacs.example/dicom-web', tls: {ca: ca.pem}}",
     "destinations.pacs: Value error, tls applies to an https:// URL only"),
    ("{dicomweb: 'http://pacs.example/dicom-web', auth: {user: me}}",
     "destinations.pacs.auth: Value error, expected token_file or token_env"),
    ("{dicomweb: 'http://pacs.example/dicom-web', auth: {password: secret}}",
     "destinations.pacs.auth.password: Extra inputs are not permitted"),
    ("{dicomweb: 'http://pacs.example/dicom-web', auth: {token_env: T, user: me, "
     "password_env: P}}", "destinations.pacs.auth: Value error, a bearer token"),
])
def test_a_dicomweb_destination_is_checked_at_load(tmp_path: Path, destination: str,
                                                   said: str | None) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(f"destinations:\n  pacs: {destination}\nforward: {{to: pacs}}\n")
    if said is None:
        web = load_config(path).destinations["pacs"]
        assert web.dicomweb == "https://pacs.example/dicom-web"  # the trailing / dropped
        assert web.tls.verify_hostname  # HTTPS checks the host name unless told not to
        return
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    (line,) = str(refused.value).splitlines()
    assert line.startswith(f"{path}: {said}"), line


def test_over_https_with_a_bearer_token_to_another_nodes_stow_rs(small_cohort: Path,
                                                                tmp_path: Path) -> None:
    """Another dicomcr node as the destination, its STOW-RS in (services/web/stow.py) over HTTPS
    with its certificate: the token names its site, which passes the images through to its
    archive as they came. The CA file and the token file are read at each try, so each mistake
    is said, then mended without a restart: a CA that did not sign the server's certificate,
    then a wrong token (401)."""
    from test_web import make_certificate

    cert, key = make_certificate(tmp_path, "receiver")  # for IP 127.0.0.1, the URL's host
    other, _ = make_certificate(tmp_path, "other")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(other.read_bytes())
    token = tmp_path / "pacs.token"
    token.write_text("not-the-right-token-at-all\n")
    token.chmod(0o600)
    right = tmp_path / "site.token"
    right.write_text(secrets.token_hex(32) + "\n")
    right.chmod(0o600)
    archive = tmp_path / "archive"
    receiver = NodeProcess(tmp_path / "receiver", {"folder": str(archive)}, http_port=free_port(),
                           http_tls=True, tls={"cert": str(cert), "key": str(key)},
                           sites=[{"name": "sender", "calling_ae": ["SENDER"], "cr": "none",
                                   "dicomweb_token_file": str(right)}])
    url = f"https://127.0.0.1:{receiver.http_port}/dicomweb"
    sender = NodeProcess(tmp_path / "sender", {"dicomweb": url, "tls": {"ca": str(ca)},
                                               "auth": {"token_file": str(token)}},
                         http_port=free_port())
    try:
        assert storescu(sender.port, MG_A, *_study(small_cohort)).returncode == 0
        _wait_until("/healthz did not say the certificate", lambda: any(
            "CERTIFICATE_VERIFY_FAILED" in w for w in _warnings(sender)))
        ca.write_bytes(cert.read_bytes())
        _wait_until("/healthz did not say the 401", lambda: any(
            f"{url}/studies answered 401 Unauthorized" in w for w in _warnings(sender)))
        assert not archive.exists()
        token.write_text(right.read_text())
        _wait_until("the receiver did not archive 4 images",
                    lambda: len(list(archive.rglob("*.dcm"))) == 4)
        _wait_until("/healthz still warns", lambda: _warnings(sender) == [])
        for path in archive.rglob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.file_meta.TransferSyntaxUID == J2K
            assert float(ds.LossyImageCompressionRatio) == pytest.approx(20, rel=0.02)
    finally:
        assert sender.terminate() == 0
        assert receiver.terminate() == 0
    assert "not-the-right-token" not in (sender.folder / "node.log").read_text()
