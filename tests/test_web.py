"""The node's HTTP face: Starlette on uvicorn in the node's process, its token, /healthz and
/metrics (their contracts unchanged), HTTPS with the node's certificate; and the streaming
multipart reader that STOW-RS uses. Real nodes (in this process, or `dicomcr serve` in its own),
real HTTP clients (httpx)."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from peers import free_port, require
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dicomcr.config import ConfigError, load_config
from services.node import Node
from services.web import Credentials, Principal, Role, TokenError
from services.web.multipart import MultipartError, MultipartScanner, PartEnd, PartStart

OPERATOR_TOKEN = "operator-" + "7" * 32
SITE_TOKEN = "site-a-" + "3" * 32
HEALTH_KEYS = {"status", "ae_title", "uptime_seconds", "queue_depth", "studies", "loops", "disk",
               "warnings"}


# -- a real node in this process ----------------------------------------------------------------
def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def node_config(folder: Path, sites: list[dict] | None = None, **node: object) -> Path:
    """A node.yaml in `folder`: DICOM and HTTP on free loopback ports, a folder archive."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"host": "127.0.0.1", "port": free_port(), "http_port": free_port(),
                 "storage": str(folder / "data"), "workers": 1, "disk_reserve_mb": 0, **node},
        "sites": sites or [{"name": "a", "calling_ae": ["MG_A"], "cr": 20}],
        "destinations": {"archive": {"folder": str(folder / "archive")}},
        "forward": {"to": "archive"}}))
    return config


@contextlib.contextmanager
def running_node(config: Path, **options: object) -> Iterator[Node]:
    """Node.start on `config` in this process (uvicorn in a thread of it), stopped at the end."""
    node = Node(load_config(config), **options)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def base_url(node: Node) -> str:
    scheme = "https" if node.config.node.http_tls else "http"
    return f"{scheme}://127.0.0.1:{node.config.node.http_port}"


def serve(config: Path) -> subprocess.CompletedProcess:
    """`dicomcr serve` where it is expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "services.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def test_healthz_and_metrics_keep_their_contracts(tmp_path: Path) -> None:
    with running_node(node_config(tmp_path)) as node, httpx.Client() as client:
        health = client.get(base_url(node) + "/healthz")
        assert health.status_code == 200
        assert health.headers["content-type"] == "application/json"
        report = health.json()
        assert set(report) == HEALTH_KEYS and report["status"] == "ok"
        assert report["loops"] == {"transcode": "running", "forward": "running"}
        metrics = client.get(base_url(node) + "/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        lines = metrics.text.splitlines()
        for line in ("dicomcr_received_total 0", "dicomcr_queue_depth 0",
                     'dicomcr_loop_up{loop="transcode"} 1', "# TYPE dicomcr_disk_low gauge"):
            assert line in lines, line
        assert client.get(base_url(node) + "/no-such-page").status_code == 404


def test_healthz_is_503_whenever_the_status_is_not_ok(tmp_path: Path) -> None:
    """A reserve larger than any disk: low_disk, answered 503 with the same JSON report."""
    with running_node(node_config(tmp_path, disk_reserve_mb=2**20)) as node:
        health = httpx.get(base_url(node) + "/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "low_disk" and set(health.json()) == HEALTH_KEYS
        assert "dicomcr_disk_low 1" in httpx.get(base_url(node) + "/metrics").text.splitlines()


def test_a_configured_token_guards_everything_but_the_probes(tmp_path: Path) -> None:
    config = node_config(tmp_path, http_token_file=str(write_token(tmp_path / "t", OPERATOR_TOKEN)),
                         sites=[{"name": "a", "calling_ae": ["MG_A"], "cr": 20,
                                 "dicomweb_token_file": str(write_token(tmp_path / "s",
                                                                        SITE_TOKEN))}])
    with running_node(config) as node, httpx.Client(base_url=base_url(node)) as client:
        assert client.get("/healthz").status_code == 200  # probes carry no token
        assert client.get("/metrics").status_code == 200
        refused = [client.get("/"),  # no token
                   client.get("/", headers={"Authorization": "Bearer " + OPERATOR_TOKEN[:-1]}),
                   client.get("/", headers={"Authorization": "Bearer " + OPERATOR_TOKEN + "x"}),
                   client.get("/", headers={"Authorization": "Basic " + OPERATOR_TOKEN}),
                   client.get("/", headers={"Authorization": "Bearer " + SITE_TOKEN}),  # STOW only
                   client.get("/no-such-page")]
        for answer in refused:  # the same answer whatever was wrong: no hint
            assert (answer.status_code, answer.text) == (401, "unauthorized\n")
            assert answer.headers["www-authenticate"] == 'Bearer realm="dicomcr"'
        allowed = client.get("/", headers={"Authorization": "Bearer " + OPERATOR_TOKEN})
        assert allowed.status_code == 200 and "DICOMCR" in allowed.text
        assert client.get("/no-such-page", headers={
            "Authorization": "bearer " + OPERATOR_TOKEN}).status_code == 404


def test_beyond_loopback_with_its_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bound to every interface, the token from the environment: the probes open, the rest
    behind the token."""
    monkeypatch.setenv("DICOMCR_TEST_HTTP_TOKEN", OPERATOR_TOKEN)
    config = node_config(tmp_path, http_host="0.0.0.0", http_token_env="DICOMCR_TEST_HTTP_TOKEN")
    with running_node(config) as node, httpx.Client(base_url=base_url(node)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 401
        assert client.get("/", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}).is_success


def test_a_node_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    config = node_config(tmp_path, http_host="0.0.0.0")
    run = serve(config)
    assert run.returncode == 2
    said = [line for line in run.stdout.splitlines() + run.stderr.splitlines()
            if "node.http_host" in line]
    assert len(said) == 1 and "beyond loopback" in said[0] and str(config) in said[0]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(("token", "said"), [
    (None, "node.http_token_file: cannot read"),
    ("short", "node.http_token_file: the token has 5 characters, at least 16"),
    ("  \n", "node.http_token_file: "),
])
def test_an_unusable_token_stops_the_start_in_one_line(tmp_path: Path, token: str | None,
                                                       said: str) -> None:
    path = tmp_path / "token"
    if token is not None:
        path.write_text(token)
    run = serve(node_config(tmp_path / "node", http_token_file=str(path)))
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if "node.http_token" in line]
    assert len(lines) == 1 and said in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_two_holders_of_one_token_are_refused(tmp_path: Path) -> None:
    shared = write_token(tmp_path / "shared", SITE_TOKEN)
    config = load_config(node_config(tmp_path, http_token_file=str(shared)))
    with pytest.raises(TokenError, match=r"sites\.0\.dicomweb_token: the same token as "
                                         r"node\.http_token"):
        Credentials.load(config.model_copy(update={"sites": [config.sites[0].model_copy(
            update={"dicomweb_token_file": shared})]}))


@pytest.mark.parametrize(("node", "site", "said"), [
    ({"http_host": "0.0.0.0"}, {}, "node.http_host: 0.0.0.0 is beyond loopback"),
    ({"http_host": "192.0.2.7"}, {}, "node.http_host: 192.0.2.7 is beyond loopback"),
    ({"http_token_file": "/t", "http_token_env": "T"}, {}, "node.http_token_env: give the token "
                                                         "by file"),
    ({"http_token_env": "NOT A NAME"}, {}, "node.http_token_env: String should match pattern"),
    ({"http_tls": True}, {}, "node.http_tls: HTTPS uses the node's certificate"),
    ({}, {"dicomweb_client_cn": "mg-a"}, "sites.0.dicomweb_client_cn: a client certificate is "
                                         "checked only with node.http_tls and node.tls.ca"),
    ({}, {"dicomweb_token_file": "/t", "dicomweb_token_env": "T"},
     "sites.0.dicomweb_token_env: give the token by file"),
])
def test_http_settings_are_checked_at_load(tmp_path: Path, node: dict, site: dict,
                                           said: str) -> None:
    """One line per problem, naming the file and the key (never the token inline)."""
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"node": node, "sites": [
        {"name": "a", "calling_ae": ["MG_A"], "cr": 20, **site}]}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    (line,) = str(refused.value).splitlines()
    assert line.startswith(f"{path}: {said}"), line
    for fine in ({"http_host": "localhost"}, {"http_host": "::1"}, {"http_host": "127.0.0.2"},
                 {"http_host": "0.0.0.0", "http_port": 0}):  # loopback, or no HTTP at all
        path.write_text(yaml.safe_dump({"node": fine}))
        assert load_config(path).node.http_host == fine["http_host"]


def test_who_asks_is_read_from_the_token_or_the_client_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_B_TOKEN", "b" * 20)
    path = node_config(tmp_path, http_token_file=str(write_token(tmp_path / "t", OPERATOR_TOKEN)),
                       sites=[{"name": "a", "calling_ae": ["MG_A"], "cr": 20,
                               "dicomweb_token_file": str(write_token(tmp_path / "s", SITE_TOKEN))},
                              {"name": "b", "calling_ae": ["MG_B"], "cr": 20,
                               "dicomweb_token_env": "SITE_B_TOKEN"}])
    credentials = Credentials.load(load_config(path))
    assert credentials.token_required
    assert credentials.identify(f"Bearer {OPERATOR_TOKEN}") == Principal(Role.OPERATOR)
    assert credentials.identify(f"Bearer {SITE_TOKEN}") == Principal(Role.SENDER, "a")
    assert credentials.identify("Bearer " + "b" * 20) == Principal(Role.SENDER, "b")
    assert credentials.identify("Bearer " + "b" * 19) is None
    assert credentials.identify("Bearer ") is None
    assert credentials.identify(None) == Principal(Role.ANONYMOUS)
    named = Credentials(common_names=(("mg-a.example", "a"),))
    assert named.identify(None, "mg-a.example") == Principal(Role.SENDER, "a")
    assert named.identify(None, "someone-else") == Principal(Role.ANONYMOUS)
    assert not named.token_required
    sender = Principal(Role.SENDER, "a")
    assert sender.may("/dicomweb/studies", True) and sender.may("/dicomweb/studies/1.2", True)
    assert not sender.may("/", True) and not sender.may("/dicomweb/studiesX", True)
    assert Principal(Role.ANONYMOUS).may("/", False) and not Principal(Role.ANONYMOUS).may("/",
                                                                                         True)


def make_certificate(folder: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A key and certificate for CN=`name`: self-signed, or signed by `ca` (cert, key)."""
    openssl = require("openssl")
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    if ca is None:
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        return cert, key
    request = folder / f"{name}.csr"
    subprocess.run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                    "-keyout", str(key), "-out", str(request)],
                   check=True, capture_output=True, timeout=60)
    subprocess.run([openssl, "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey",
                    str(ca[1]), "-CAcreateserial", "-days", "1", "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_with_the_nodes_certificate(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "node")
    config = node_config(tmp_path, http_tls=True, tls={"cert": str(cert), "key": str(key)})
    with running_node(config) as node:
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=trusted) as client:
            assert client.get(base_url(node) + "/healthz").status_code == 200
        with pytest.raises(httpx.TransportError):  # plain HTTP to the HTTPS port
            httpx.get(f"http://127.0.0.1:{node.config.node.http_port}/healthz", timeout=5)
        with httpx.Client(verify=trusted) as client:  # and it keeps serving
            assert client.get(base_url(node) + "/healthz").json()["status"] == "ok"


def test_added_routes_come_first_and_see_the_node(tmp_path: Path) -> None:
    """How the operator page mounts itself: Node(web_routes=...); its routes take precedence
    (here `/`), find the node in request.app.state.web and stay behind the token."""

    def page(request: Request) -> PlainTextResponse:
        web = request.app.state.web
        return PlainTextResponse(f"page of {web.ctx.config.node.ae_title}, "
                                 f"{request.state.principal.role}")

    config = node_config(tmp_path, http_token_file=str(write_token(tmp_path / "t", OPERATOR_TOKEN)))
    with running_node(config, web_routes=[Route("/", page)]) as node:
        assert httpx.get(base_url(node) + "/").status_code == 401
        answer = httpx.get(base_url(node) + "/",
                           headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert answer.text == "page of DICOMCR, operator"


# -- the streaming multipart reader ---------------------------------------------------------------
BOUNDARY = "b0undary-7f3a"


def multipart(parts: list[tuple[dict[str, str], bytes]], boundary: str = BOUNDARY,
              preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    body = preamble
    for headers, content in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        body += f"--{boundary}\r\n{head}\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--".encode() + epilogue


def read_parts(body: bytes, chunk: int, boundary: str = BOUNDARY) -> list[tuple[dict, bytes]]:
    scanner = MultipartScanner(boundary)
    parts: list[tuple[dict, bytes]] = []
    content = bytearray()
    headers: dict | None = None
    for start in range(0, len(body), chunk):
        for event in scanner.feed(body[start:start + chunk]):
            if isinstance(event, PartStart):
                headers, content = event.headers, bytearray()
            elif isinstance(event, PartEnd):
                parts.append((headers, bytes(content)))
            else:
                content += event
    scanner.close()
    return parts


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 65536])
def test_parts_come_out_whole_however_the_body_is_cut(chunk: int) -> None:
    tricky = [  # content that looks like a delimiter, but is none
        ({"Content-Type": "application/dicom"}, b"DICM" + os.urandom(300)),
        ({"Content-Type": "application/dicom"}, b"\r\n--" + BOUNDARY[:-1].encode() + b"x\r\n"),
        ({"Content-Type": "application/dicom", "Content-Length": "0"}, b""),
        ({}, b"\r\n\r\n-- " + BOUNDARY.encode() + b"\r"),
    ]
    body = multipart(tricky, preamble=b"a preamble\r\n", epilogue=b"\r\nan epilogue")
    assert read_parts(body, chunk) == [({k.lower(): v for k, v in h.items()}, c)
                                       for h, c in tricky]


def test_boundaries_longer_than_rfc_2046_says_are_read_as_orthanc_sends_them() -> None:
    orthanc = "e28de35c-b38b-42e1-9862-99afdb300d76-e28de35c-b38b-42e1-9862-99afdb300d76"
    assert len(orthanc) == 73  # RFC 2046 allows 70
    parts = [({"content-type": "application/dicom"}, b"DICM" * 1000)]
    assert read_parts(multipart(parts, orthanc), 999, orthanc) == parts
    for wrong in ("", "x" * 257):
        with pytest.raises(MultipartError, match=f"a multipart boundary of {len(wrong)} "):
            MultipartScanner(wrong)


def test_padding_after_a_boundary_and_folded_headers_are_read() -> None:
    body = (f"--{BOUNDARY} \t\r\nContent-Type: multipart/related;\r\n type=x\r\n\r\nabc\r\n"
            f"--{BOUNDARY}--  \r\n").encode()
    assert read_parts(body, 5) == [({"content-type": "multipart/related; type=x"}, b"abc")]


@pytest.mark.parametrize(("body", "said"), [
    (b"just some text", "no boundary --b0undary-7f3a in the body: not a multipart body"),
    (b"x" * 70_000, "no boundary --b0undary-7f3a in the first 64 KiB"),
    (f"--{BOUNDARY}\r\nContent-Type: a\r\n\r\nhalf a part".encode(),
     "the body ended before its closing boundary"),
    (f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
     "a part's header line is not 'Name: value'"),
    (f"--{BOUNDARY}junk\r\n\r\nx\r\n--{BOUNDARY}--".encode(), "followed by neither a line end"),
    (f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"y" * 20_000, "a part's headers exceed 16 KiB"),
])
def test_what_is_not_multipart_is_said_in_one_line(body: bytes, said: str) -> None:
    with pytest.raises(MultipartError) as refused:
        read_parts(body, 4096)
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_a_large_part_passes_through_in_bounded_memory() -> None:
    """40 MiB of content fed in 64 KiB chunks: the reader holds one chunk and a delimiter's
    length, never the part."""
    scanner = MultipartScanner(BOUNDARY)
    chunk = os.urandom(65536)
    seen = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        scanner.feed(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        for _ in range(640):
            seen += sum(len(e) for e in scanner.feed(chunk) if isinstance(e, bytes))
        events = scanner.feed(f"\r\n--{BOUNDARY}--".encode())
        seen += sum(len(e) for e in events if isinstance(e, bytes))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    scanner.close()
    assert seen == 640 * 65536 and isinstance(events[-1], PartEnd)
    assert peak < 1 * 2**20, f"{peak} bytes held at the peak"


def test_the_health_report_is_the_nodes_own(tmp_path: Path) -> None:
    """What /healthz serves is Node.health(), status code aside (json, as http.server did)."""
    with running_node(node_config(tmp_path)) as node:
        served = httpx.get(base_url(node) + "/healthz").json()
        own = json.loads(json.dumps(node.health()))
        for changing in ("uptime_seconds", "disk"):  # others write to this disk meanwhile
            served.pop(changing), own.pop(changing)
        assert served == own


def test_without_a_token_only_requests_addressed_to_this_machine_are_answered(
        tmp_path: Path) -> None:
    """DNS rebinding: a page whose host name an attacker points at 127.0.0.1 must not reach the
    page, Retry or STOW-RS from a browser here, even where a '*' site takes unknown senders."""
    import httpx

    config = node_config(tmp_path, sites=[{"name": "any", "calling_ae": ["*"], "cr": 20}])
    with running_node(config) as node:
        url = base_url(node)
        body = multipart([({"Content-Type": "application/dicom"}, b"x")])
        kind = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        for path, method in (("/", "GET"), ("/dicomweb/studies", "POST")):
            evil = httpx.request(method, url + path, headers={"Host": "evil.example:80",
                                                              "Content-Type": kind},
                                 content=body if method == "POST" else None, timeout=10)
            assert evil.status_code == 403 and "evil.example" in evil.text, (path, evil.text)
        assert httpx.get(url + "/healthz", headers={"Host": "evil.example"}).status_code == 200
        local = httpx.post(url + "/dicomweb/studies", headers={"Content-Type": kind},
                           content=body, timeout=10)
        assert local.status_code == 409  # answered: not DICOM, but addressed to this node
    assert not list((tmp_path / "data" / "spool").glob("*.dcm"))
