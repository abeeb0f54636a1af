"""STOW-RS in (PS3.18 10.5): a real node in this process (uvicorn in a thread of it), dicomweb-client
as the sender, raw httpx and raw sockets for the malformed requests, DCMTK's echoscu and storescu
to show that DIMSE goes on after each, and Orthanc's DICOMweb plugin sending to the node."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from peers import require
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError
from test_node import echoscu, storescu
from test_web import (
    OPERATOR_TOKEN,
    SITE_TOKEN,
    base_url,
    make_certificate,
    node_config,
    running_node,
    write_token,
)

from dicomcr.config import load_config
from dicomcr.data.dataset import PHANTOM_DICOM
from services.node import Node

SITE_B_TOKEN = "site-b-" + "5" * 32
BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MISMATCH, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0xA901, 0xC000, 0xA700
FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"
INSTANCE_UID = "00081155"


def _studies(cohort: Path) -> list[list[Path]]:
    return [sorted(folder.glob("*.dcm")) for folder in sorted((cohort / PHANTOM_DICOM).iterdir())]


def multipart(*contents: bytes, boundary: str = BOUNDARY) -> bytes:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + content
                    + b"\r\n" for content in contents)
    return body + f"--{boundary}--\r\n".encode()


def instance(template: Path, folder: Path, rows: int, columns: int,
             study_uid: str | None = None) -> Path:
    """A valid MG instance of rows x columns 16-bit pixels, new UIDs, from a phantom image."""
    ds = pydicom.dcmread(template)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = np.full((rows, columns), 1000, dtype=np.uint16).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def stored_files(node: Node) -> dict[str, set[str]]:
    """The files of the node's storage folder by where they lie (spool, quarantine, incoming,
    and anything else but the job store's)."""
    root = node.storage.root
    found: dict[str, set[str]] = {"spool": set(), "quarantine": set(), "incoming": set(),
                                  "elsewhere": set()}
    for path in root.rglob("*"):
        if path.is_dir() or path.name.startswith("jobs.sqlite"):
            continue
        where = path.relative_to(root).parts[0]
        found[where if where in found else "elsewhere"].add(path.name)
    return found


def images_of(node: Node, site: str) -> int:
    return sum(node.store.counts().get(site, {}).get("image", {}).values())


def still_serving(node: Node, files: list[Path]) -> None:
    """DIMSE and HTTP go on: an echo, a C-STORE, /healthz."""
    assert echoscu(node.config.node.port) == 0
    assert storescu(node.config.node.port, "MG_A", files[0]).returncode == 0
    assert httpx.get(base_url(node) + "/healthz").json()["status"] == "ok"


def post(node: Node, body: bytes, content_type: str = CONTENT_TYPE, path: str = "",
         token: str | None = SITE_TOKEN) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{base_url(node)}/dicomweb/studies{path}", content=body, headers=headers,
                      timeout=60)


@pytest.fixture
def stow_node(tmp_path: Path) -> Iterator[Node]:
    """A node whose sites a and b send by token (no '*' site: unknown senders are refused), a
    2 MiB instance limit and a 3 s network timeout."""
    sites = [{"name": "a", "calling_ae": ["MG_A"], "cr": 20,
              "dicomweb_token_file": str(write_token(tmp_path / "a.token", SITE_TOKEN))},
             {"name": "b", "calling_ae": ["MG_B"], "cr": "none",
              "dicomweb_token_file": str(write_token(tmp_path / "b.token", SITE_B_TOKEN))}]
    config = node_config(tmp_path / "node", sites, max_instance_mb=2, network_timeout=3)
    with running_node(config) as node:
        yield node


@pytest.fixture
def small(tmp_path: Path, small_cohort: Path) -> Callable[..., Path]:
    """make(study_uid=None) -> a 256 x 256 MG instance (128 KiB), below the 2 MiB limit."""
    template = _studies(small_cohort)[0][0]
    return lambda study_uid=None: instance(template, tmp_path / "made", 256, 256, study_uid)


def test_a_study_sent_with_dicomweb_client_is_stored_transcoded_and_forwarded(
        stow_node: Node, small_cohort: Path) -> None:
    files = _studies(small_cohort)[0]
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    client = DICOMwebClient(base_url(stow_node) + "/dicomweb",
                            headers={"Authorization": f"Bearer {SITE_TOKEN}"})
    answer = client.store_instances([pydicom.dcmread(p) for p in files], study_instance_uid=study)
    sent = {pydicom.dcmread(p).SOPInstanceUID for p in files}
    assert {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence} == sent
    assert "FailedSOPSequence" not in answer
    # durable and recorded before the answer: in the spool and the job store, as site a
    assert {f"{uid}.dcm" for uid in sent} <= stored_files(stow_node)["spool"]
    assert images_of(stow_node, "a") == 4
    archive = stow_node.storage.root.parent / "archive"
    deadline = time.monotonic() + 90  # then the same transcode and forwarding as a C-STORE
    while len(list(archive.rglob("*.dcm"))) < 4:
        assert time.monotonic() < deadline, "the study did not reach the archive"
        time.sleep(0.25)
    for path in archive.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(20, rel=0.05)
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in sent
    metrics = httpx.get(base_url(stow_node) + "/metrics").text.splitlines()
    assert "dicomcr_received_total 4" in metrics
    assert 'dicomcr_stage_seconds_count{stage="receive"} 4' in metrics


def test_the_sender_is_the_site_of_its_token_and_an_unknown_one_is_refused(
        tmp_path: Path, small: Callable[..., Path]) -> None:
    sites = [{"name": "a", "calling_ae": ["MG_A"], "cr": 20,
              "dicomweb_token_file": str(write_token(tmp_path / "a.token", SITE_TOKEN))},
             {"name": "b", "calling_ae": ["MG_B"], "cr": "none",
              "dicomweb_token_file": str(write_token(tmp_path / "b.token", SITE_B_TOKEN))}]
    config = node_config(tmp_path / "node", sites,
                         http_token_file=str(write_token(tmp_path / "op", OPERATOR_TOKEN)))
    with running_node(config) as node:
        assert post(node, multipart(small().read_bytes()), token=SITE_B_TOKEN).status_code == 200
        assert images_of(node, "b") == 1 and images_of(node, "a") == 0
        body = multipart(small().read_bytes())
        for token in (None, SITE_TOKEN[:-1], "x" * 40):  # no token, a wrong one: 401, no hint
            refused = post(node, body, token=token)
            assert (refused.status_code, refused.text) == (401, "unauthorized\n")
        operator = post(node, body, token=OPERATOR_TOKEN)  # known, but no sender
        assert operator.status_code == 403
        assert images_of(node, "a") + images_of(node, "b") == 1
        assert stored_files(node)["incoming"] == set()
    # Where a '*' site takes any calling AE, it takes any sender on loopback too, as that site.
    anyone = node_config(tmp_path / "open", [{"name": "open", "calling_ae": ["*"], "cr": 20}])
    with running_node(anyone) as node:
        assert post(node, multipart(small().read_bytes()), token=None).status_code == 200
        assert images_of(node, "open") == 1


def test_a_part_of_another_study_fails_alone(stow_node: Node, small: Callable[..., Path]) -> None:
    study = generate_uid()
    ours, other = [small(study), small(study)], small()
    answer = post(stow_node, multipart(*(p.read_bytes() for p in [ours[0], other, ours[1]])),
                  path=f"/{study}")
    assert answer.status_code == 202  # some stored, some failed
    assert answer.headers["content-type"] == "application/dicom+json"
    body = answer.json()
    (failed,) = body[FAILED]["Value"]
    assert failed[INSTANCE_UID]["Value"] == [pydicom.dcmread(other).SOPInstanceUID]
    assert failed[REASON] == {"vr": "US", "Value": [MISMATCH]}
    assert len(body[REFERENCED]["Value"]) == 2
    files = stored_files(stow_node)
    assert f"{pydicom.dcmread(other).SOPInstanceUID}.dcm" not in files["spool"]
    assert files["quarantine"] == files["incoming"] == files["elsewhere"] == set()


def _only_failure(answer: httpx.Response, reason: int) -> dict:
    assert answer.status_code == 409, answer.text  # none stored
    assert answer.headers["content-type"] == "application/dicom+json"
    body = answer.json()
    assert REFERENCED not in body
    (failed,) = body[FAILED]["Value"]
    assert failed[REASON]["Value"] == [reason]
    return failed


def _reasons(node: Node) -> list[str]:
    return [p.read_text() for p in sorted((node.storage.quarantine).glob("*.reason.txt"))]


def test_a_part_that_is_not_dicom_is_quarantined_with_its_reason(
        stow_node: Node, small: Callable[..., Path]) -> None:
    failed = _only_failure(post(stow_node, multipart(b"not a DICOM file\r\n" * 100)),
                           CANNOT_UNDERSTAND)
    assert INSTANCE_UID not in failed  # nothing to name it by
    (reason,) = _reasons(stow_node)
    assert "cannot understand the dataset" in reason
    files = stored_files(stow_node)
    assert files["spool"] == files["incoming"] == files["elsewhere"] == set()
    still_serving(stow_node, [small()])


@pytest.mark.parametrize("keep", [0.5, 0.002])  # cut inside Pixel Data, inside the header
def test_a_truncated_part_is_quarantined(stow_node: Node, small: Callable[..., Path],
                                         keep: float) -> None:
    whole = small()
    data = whole.read_bytes()
    failed = _only_failure(post(stow_node, multipart(data[:int(len(data) * keep)])),
                           CANNOT_UNDERSTAND)
    if keep > 0.1:  # the header arrived whole: the failure names the instance
        assert failed[INSTANCE_UID]["Value"] == [pydicom.dcmread(whole).SOPInstanceUID]
    (reason,) = _reasons(stow_node)
    assert "Pixel Data" in reason or "cannot understand" in reason
    assert stored_files(stow_node)["spool"] == set()
    still_serving(stow_node, [small()])


def test_a_part_above_the_size_limit_is_refused_without_writing_it_all(
        stow_node: Node, small: Callable[..., Path], small_cohort: Path, tmp_path: Path) -> None:
    big = instance(_studies(small_cohort)[0][0], tmp_path / "big", 1536, 1024)  # 3 MiB > 2 MiB
    failed = _only_failure(post(stow_node, multipart(big.read_bytes())), OUT_OF_RESOURCES)
    assert failed[INSTANCE_UID]["Value"] == [pydicom.dcmread(big).SOPInstanceUID]
    (reason,) = _reasons(stow_node)
    assert f"above the {2 * 2**20} byte limit" in reason
    (kept,) = stow_node.storage.quarantine.glob("*.dcm")
    assert kept.stat().st_size == 2 * 2**20 + 1  # written up to the limit, the rest dropped
    assert stored_files(stow_node)["spool"] == set()
    still_serving(stow_node, [small()])


def test_below_the_disk_reserve_a_part_is_out_of_resources_and_not_kept(
        tmp_path: Path, small: Callable[..., Path]) -> None:
    sites = [{"name": "a", "calling_ae": ["MG_A"], "cr": 20,
              "dicomweb_token_file": str(write_token(tmp_path / "a.token", SITE_TOKEN))}]
    with running_node(node_config(tmp_path / "node", sites, disk_reserve_mb=2**20)) as node:
        _only_failure(post(node, multipart(small().read_bytes())), OUT_OF_RESOURCES)
        assert all(not files for files in stored_files(node).values())
        assert "dicomcr_out_of_space_total 1" in httpx.get(base_url(node) + "/metrics").text


@pytest.mark.parametrize("content_type", [
    "application/dicom", "application/json", "multipart/related; type=\"application/dicom+json\"; "
    f"boundary={BOUNDARY}", f"multipart/mixed; boundary={BOUNDARY}", ""])
def test_a_wrong_content_type_is_415(stow_node: Node, small: Callable[..., Path],
                                     content_type: str) -> None:
    answer = post(stow_node, multipart(small().read_bytes()), content_type=content_type)
    assert answer.status_code == 415
    assert "expected Content-Type multipart/related" in answer.text
    assert all(not files for files in stored_files(stow_node).values())
    still_serving(stow_node, [small()])


def test_a_multipart_type_without_a_boundary_is_400(stow_node: Node,
                                                    small: Callable[..., Path]) -> None:
    answer = post(stow_node, multipart(small().read_bytes()),
                  content_type='multipart/related; type="application/dicom"')
    assert (answer.status_code, answer.text) == (
        400, "a multipart boundary of 0 characters: 1 to 256 are read (RFC 2046 says 70)\n")
    assert all(not files for files in stored_files(stow_node).values())


@pytest.mark.parametrize("body", [
    b"this is not a multipart body at all",
    f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nDICM and no end".encode(),
    f"--{BOUNDARY}--\r\n".encode(),  # no parts
])
def test_a_body_that_is_not_multipart_is_400(stow_node: Node, small: Callable[..., Path],
                                             body: bytes) -> None:
    answer = post(stow_node, body)
    assert answer.status_code == 400 and answer.text.count("\n") == 1, answer.text
    assert all(not files for files in stored_files(stow_node).values())
    still_serving(stow_node, [small()])


def test_a_body_cut_after_a_whole_part_stores_that_part(stow_node: Node,
                                                        small: Callable[..., Path]) -> None:
    first, second = small(), small()
    body = multipart(first.read_bytes()).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    body += f"--{BOUNDARY}\r\n\r\n".encode() + second.read_bytes()[:5000]
    answer = post(stow_node, body)
    assert answer.status_code == 202
    assert [i[INSTANCE_UID]["Value"] for i in answer.json()[REFERENCED]["Value"]] == [
        [pydicom.dcmread(first).SOPInstanceUID]]
    (failed,) = answer.json()[FAILED]["Value"]
    assert failed[REASON]["Value"] == [CANNOT_UNDERSTAND]
    files = stored_files(stow_node)
    assert files["spool"] == {first.name} and files["incoming"] == files["quarantine"] == set()


def _raw(node: Node, target: str, body: bytes, token: str = SITE_TOKEN) -> tuple[int, str]:
    """A POST whose target goes out byte for byte as given (http.client does not normalise)."""
    connection = http.client.HTTPConnection("127.0.0.1", node.config.node.http_port, timeout=30)
    try:
        connection.request("POST", target, body, {"Content-Type": CONTENT_TYPE,
                                                  "Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize("target", [
    "/dicomweb/studies/..", "/dicomweb/studies/%2e%2e", "/dicomweb/studies/%2E%2E%2F%2E%2E%2Fspool",
    "/dicomweb/studies/1.2.3%2F..%2F..%2Fx", "/dicomweb/studies/1.2/../../../etc",
    "/dicomweb/studies/1.2.3/4", "/dicomweb/studies/", "/dicomweb/studies/1.2.840.x",
    "/dicomweb/studies/" + "1." * 40 + "1"])
def test_a_path_escaping_study_uid_is_400(stow_node: Node, small: Callable[..., Path],
                                          target: str) -> None:
    status, text = _raw(stow_node, target, multipart(small().read_bytes()))
    assert status == 400 and "Study Instance UID in the URL is not a valid DICOM UID" in text
    assert all(not files for files in stored_files(stow_node).values())
    assert not list(stow_node.storage.root.parent.glob("*.dcm"))
    still_serving(stow_node, [small()])


def _read_answer(sock: socket.socket) -> tuple[str, bytes]:
    """An HTTP answer on a raw socket: its status line and its body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"\r\n\r\n"
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines
                   if line.lower().startswith("content-length:")), 0)
    while len(body) < length and (more := sock.recv(65536)):
        body += more
    return lines[0], body


def _partial_request(node: Node, data: bytes) -> socket.socket:
    """A STOW-RS request that announces 10 MB and sends only its start (`data`)."""
    sock = socket.create_connection(("127.0.0.1", node.config.node.http_port), timeout=30)
    sock.sendall(f"POST /dicomweb/studies HTTP/1.1\r\nHost: node\r\nContent-Type: {CONTENT_TYPE}"
                 f"\r\nAuthorization: Bearer {SITE_TOKEN}\r\nContent-Length: 10000000\r\n\r\n"
                 .encode() + f"--{BOUNDARY}\r\n\r\n".encode() + data)
    return sock


def test_a_client_that_stops_sending_is_answered_408_and_freed(
        stow_node: Node, small: Callable[..., Path]) -> None:
    sock = _partial_request(stow_node, small().read_bytes()[:60_000])
    with sock:
        deadline = time.monotonic() + 20
        while not stored_files(stow_node)["incoming"]:  # the part is being written
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        status, answer = _read_answer(sock)  # node.network_timeout is 3 s
        assert status.startswith("HTTP/1.1 408 "), status
        assert answer == b"nothing arrived for 3 s: the part being sent was dropped\n"
        assert 2 < time.monotonic() - started < 15
        while sock.recv(65536):  # and the connection is closed
            pass
    assert all(not files for files in stored_files(stow_node).values())  # nothing acknowledged
    assert images_of(stow_node, "a") == 0
    still_serving(stow_node, [small()])


def test_a_client_that_goes_away_mid_part_leaves_nothing(stow_node: Node,
                                                          small: Callable[..., Path]) -> None:
    with _partial_request(stow_node, small().read_bytes()[:60_000]):
        deadline = time.monotonic() + 20
        while not stored_files(stow_node)["incoming"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    deadline = time.monotonic() + 20
    while stored_files(stow_node)["incoming"]:  # the half part is deleted
        assert time.monotonic() < deadline, stored_files(stow_node)
        time.sleep(0.05)
    assert all(not files for files in stored_files(stow_node).values())
    still_serving(stow_node, [small()])


def test_stopping_lets_a_request_in_flight_finish_and_turns_new_ones_away(
        tmp_path: Path, small: Callable[..., Path]) -> None:
    """Node.stop: STOW-RS requests that arrive now get 503; the one under way finishes, its
    parts stored and answered, before the HTTP server and the job store close."""
    sites = [{"name": "a", "calling_ae": ["MG_A"], "cr": "none",
              "dicomweb_token_file": str(write_token(tmp_path / "a.token", SITE_TOKEN))}]
    node = Node(load_config(node_config(tmp_path / "node", sites, network_timeout=20)))
    node.start()
    first, second = small(), small()
    body = multipart(first.read_bytes(), second.read_bytes())
    cut = len(body) - 1000
    with socket.create_connection(("127.0.0.1", node.config.node.http_port), timeout=60) as sock:
        sock.sendall(f"POST /dicomweb/studies HTTP/1.1\r\nHost: node\r\nContent-Type: "
                     f"{CONTENT_TYPE}\r\nAuthorization: Bearer {SITE_TOKEN}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:cut])
        deadline = time.monotonic() + 20
        while images_of(node, "a") < 1:  # the first part is in
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stopping = threading.Thread(target=node.stop)
        stopping.start()
        while not node.ctx.stopping.is_set():
            time.sleep(0.01)
        late = post(node, multipart(small().read_bytes()))
        assert late.status_code == 503 and late.headers["retry-after"] == "30"
        sock.sendall(body[cut:])
        status, answer = _read_answer(sock)
    stopping.join(60)
    assert not stopping.is_alive()
    assert status.startswith("HTTP/1.1 200 "), status
    assert len(json.loads(answer)[REFERENCED]["Value"]) == 2
    assert stored_files(node)["spool"] == {first.name, second.name}


def test_several_senders_at_once(stow_node: Node, small: Callable[..., Path]) -> None:
    studies = [[small() for _ in range(4)] for _ in range(3)]

    def send(files: list[Path], token: str) -> int:
        client = DICOMwebClient(base_url(stow_node) + "/dicomweb",
                                headers={"Authorization": f"Bearer {token}"})
        return len(client.store_instances([pydicom.dcmread(p) for p in files])
                   .ReferencedSOPSequence)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        sent = list(pool.map(send, studies, [SITE_TOKEN, SITE_B_TOKEN, SITE_TOKEN]))
    assert sent == [4, 4, 4]
    assert images_of(stow_node, "a") == 8 and images_of(stow_node, "b") == 4
    assert len(stored_files(stow_node)["spool"]) == 12


def test_a_full_size_instance_is_streamed_not_held(tmp_path: Path, small_cohort: Path) -> None:
    """A 26 MiB instance, sent in 64 KiB chunks: this process (the node and its uvicorn) holds
    a small part of it at any time."""
    big = instance(_studies(small_cohort)[0][0], tmp_path / "big", 3328, 4096)
    config = node_config(tmp_path / "node", [{"name": "a", "calling_ae": ["*"], "cr": "none"}])

    def body() -> Iterator[bytes]:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with open(big, "rb") as source:
            while chunk := source.read(65536):
                yield chunk
        yield f"\r\n--{BOUNDARY}--".encode()

    with running_node(config) as node:
        tracemalloc.start()
        try:
            answer = httpx.post(base_url(node) + "/dicomweb/studies", content=body(),
                                headers={"Content-Type": CONTENT_TYPE}, timeout=120)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert answer.status_code == 200, answer.text
        assert (node.storage.spool / big.name).stat().st_size == big.stat().st_size
    assert big.stat().st_size > 26 * 2**20
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB held at the peak"


def test_a_client_certificate_names_its_site(tmp_path: Path, small: Callable[..., Path]) -> None:
    """HTTPS with the node's certificate; a sender's certificate, signed by node.tls.ca, picks
    the site whose dicomweb_client_cn is its Common Name. Without one: 401; with one the CA did
    not sign: no connection."""
    node_cert, node_key = make_certificate(tmp_path, "node")
    ca = make_certificate(tmp_path, "hospital-ca")
    client = make_certificate(tmp_path, "mg-a.hospital", ca)
    stranger = make_certificate(tmp_path, "mg-a.hospital-elsewhere")  # self-signed
    sites = [{"name": "a", "calling_ae": ["MG_A"], "cr": 20, "dicomweb_client_cn": "mg-a.hospital"}]
    config = node_config(tmp_path / "node", sites, http_tls=True, tls={
        "cert": str(node_cert), "key": str(node_key), "ca": str(ca[0])})

    def context(certificate: tuple[Path, Path] | None) -> ssl.SSLContext:
        trusted = ssl.create_default_context(cafile=str(node_cert))
        if certificate is not None:
            trusted.load_cert_chain(*map(str, certificate))
        return trusted

    body = multipart(small().read_bytes())
    headers = {"Content-Type": CONTENT_TYPE}
    with running_node(config) as node:
        url = base_url(node) + "/dicomweb/studies"
        with httpx.Client(verify=context(client)) as sender:
            assert sender.post(url, content=body, headers=headers).status_code == 200
        assert images_of(node, "a") == 1
        with httpx.Client(verify=context(None)) as anonymous:
            assert anonymous.post(url, content=body, headers=headers).status_code == 401
            assert anonymous.get(base_url(node) + "/healthz").status_code == 200
        with httpx.Client(verify=context(stranger)) as other, \
                pytest.raises(httpx.TransportError):
            other.post(url, content=body, headers=headers)
        assert images_of(node, "a") == 1


def test_orthanc_sends_a_study_to_the_node_with_its_dicomweb_plugin(
        tmp_path: Path, small_cohort: Path) -> None:
    """Orthanc's DICOMweb plugin as the sender: a study uploaded to Orthanc, then its STOW-RS
    client told to send it to the node (a DicomWeb server entry with the site's token)."""
    from peers import Orthanc

    sites = [{"name": "a", "calling_ae": ["MG_A"], "cr": 20,
              "dicomweb_token_file": str(write_token(tmp_path / "a.token", SITE_TOKEN))}]
    config = node_config(tmp_path / "node", sites)
    files = _studies(small_cohort)[1]
    with running_node(config) as node:
        pacs = Orthanc(tmp_path / "orthanc", dicomweb=True, dicomweb_servers={"node": {
            "Url": base_url(node) + "/dicomweb",
            "HttpHeaders": {"Authorization": f"Bearer {SITE_TOKEN}"}}})
        try:
            for path in files:
                upload = httpx.post(f"http://127.0.0.1:{pacs.http_port}/instances",
                                    content=path.read_bytes(), timeout=30)
                assert upload.status_code == 200, upload.text
            (study,) = pacs.get("/studies")
            sent = httpx.post(f"http://127.0.0.1:{pacs.http_port}/dicom-web/servers/node/stow",
                              content=json.dumps({"Resources": [study], "Synchronous": True}),
                              timeout=120)
            assert sent.status_code == 200, sent.text
        finally:
            pacs.stop()
        assert images_of(node, "a") == 4
        assert {f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in files} == \
            stored_files(node)["spool"]


def test_a_refused_request_leaves_dicomweb_client_an_error_it_can_read(
        stow_node: Node, small: Callable[..., Path]) -> None:
    """409 with the failures in the body: dicomweb-client raises, with the status."""
    client = DICOMwebClient(base_url(stow_node) + "/dicomweb",
                            headers={"Authorization": f"Bearer {SITE_TOKEN}"})
    other = pydicom.dcmread(small())
    with pytest.raises(HTTPError) as refused:
        client.store_instances([other], study_instance_uid=generate_uid())
    assert refused.value.response.status_code == 409
    (failed,) = refused.value.response.json()[FAILED]["Value"]
    assert failed[REASON]["Value"] == [MISMATCH]
    assert require("echoscu") and echoscu(stow_node.config.node.port) == 0
