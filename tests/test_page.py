"""The operator page, in this process: a real node (uvicorn in a thread) over a job store filled
with what a node records (images in every state, a study classified with its saliency captures,
a failure, a forwarding retry, a refusal), read with httpx as a browser would, its login form
and cookie, and the checks that keep other sites from pressing Retry. The page in a real browser,
while a study flows through a node, is tests/test_browser.py."""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from test_web import OPERATOR_TOKEN, SITE_TOKEN, base_url, node_config, running_node, write_token

from dicomcr.audit.audit import guideline_verdict, load_guidelines
from dicomcr.config import Policy, load_config
from dicomcr.dicom.saliency import SaliencyCapture
from dicomcr.jobs import JobStore, Storage
from dicomcr.jobs.spool import quarantine
from dicomcr.net.scu import Peer, send
from services.node import Node
from services.web.page import build_page
from services.web.thumbnails import THUMBNAIL_SIDE, Captures

MG = DigitalMammographyXRayImageStorageForPresentation
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SITES = [{"name": "a", "calling_ae": ["MG_A"], "cr": 20},
         {"name": "b", "calling_ae": ["MG_B"], "cr": "none"}]
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def make_capture(path: Path, study_uid: str, sop_uid: str, side: str, view: str,
                 probability: float, number: int, shape: tuple[int, int] = (400, 300)) -> Path:
    """A saliency SC as the node writes one (dicomcr.dicom.saliency), of a synthetic view."""
    source = Dataset()
    source.StudyInstanceUID, source.SOPInstanceUID, source.SOPClassUID = \
        study_uid, generate_uid(), MG
    source.ImageLaterality, source.ViewPosition, source.PatientID = side, view, "P1"
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    image = (rows / shape[0] * 0.6 + 0.2).astype(np.float32)
    heat = np.exp(-((rows - shape[0] / 2) ** 2 + (cols - shape[1] / 2) ** 2) / (2 * 40.0 ** 2))
    capture = SaliencyCapture(
        source=source, view=image, heat=heat.astype(np.float32), probability=probability,
        model_name="cnn3-test", model_version="1", trained_crs=[20.0], input_cr="20",
        series_instance_uid=generate_uid(), sop_instance_uid=sop_uid, instance_number=number)
    path.parent.mkdir(parents=True, exist_ok=True)
    capture.save_as(path, enforce_file_format=True)
    return path


@dataclass(frozen=True)
class Filled:
    """What fill() put in a store: the UIDs to look for on the page."""

    study: str  # classified, with two captures and a report
    images: tuple[str, ...]  # its images: three done, the last one failed
    failed: str
    failure: str  # the failure's reason, with markup in it
    captures: tuple[str, ...]
    report: str  # the SR: no thumbnail
    retrying: str  # a capture whose forwarding waits for its next try
    other_study: str  # site b's, pass-through, no model
    refusal: str


def fill(storage: Storage) -> Filled:
    """A job store as a node leaves it, every write through the store's own methods."""
    study, other = generate_uid(), generate_uid()
    images = tuple(generate_uid() for _ in range(4))
    captures, report = (generate_uid(), generate_uid(), generate_uid()), generate_uid()
    failure = "<script>alert('x')</script> could not be decoded"
    with JobStore(storage.store) as store:
        for uid, cr in zip(images, (19.5, 20.4, 20.1, None), strict=True):
            store.received(sop_instance_uid=uid, sop_class_uid=MG, study_uid=study,
                           calling_ae="MG_A", site="a", policy=Policy.parse(20),
                           spool_path=storage.spooled(uid), size=1000)
            store.queued(uid)
            if cr is None:
                store.failed(uid, failure)
            else:
                store.transcoded(uid, [storage.outputs_of(uid) / "image.dcm"], cr)
                store.done(uid)
        store.study_queued(study)
        store.study_done(study, probabilities={"L": 0.412, "R": 0.087})
        for number, (uid, (side, view)) in enumerate(zip(captures, [("L", "CC"), ("L", "MLO"),
                                                                    ("R", "CC")], strict=True)):
            path = make_capture(storage.derived_of(study) / f"SC_{side}{view}.dcm", study, uid,
                                side, view, 0.412 if side == "L" else 0.087, number + 1)
            store.derived(sop_instance_uid=uid, sop_class_uid=SecondaryCaptureImageStorage,
                          study_uid=study, site="a", path=path)
        store.forward_failed(captures[2], 2, time.time() + 3600,
                             "destination pacs answered 0xA700 (Out of Resources)")
        for uid in captures[:2]:
            store.done(uid)
        sr = storage.derived_of(study) / "SR.dcm"
        sr.write_bytes(b"not a capture")  # what is no SC gets no thumbnail
        store.derived(sop_instance_uid=report, sop_class_uid=SR_CLASS, study_uid=study,
                      site="a", path=sr)
        store.done(report)
        passed = generate_uid()
        store.received(sop_instance_uid=passed, sop_class_uid=MG, study_uid=other,
                       calling_ae="MG_B", site="b", policy=Policy.parse("none"),
                       spool_path=storage.spooled(passed), size=1000,
                       skipped="site b has no model")
        store.queued(passed)
        store.transcoded(passed, [storage.spooled(passed)])
        store.done(passed)
    storage.incoming.mkdir(parents=True, exist_ok=True)
    bad = storage.incoming / "bad.dcm"
    bad.write_bytes(b"DICM?")
    kept = quarantine(storage, bad, "BitsAllocated 7 is neither 1 nor a multiple of 8", "1.2.3")
    return Filled(study, images, images[3], failure, captures[:3], report, captures[2], other,
                  kept.name)


@contextlib.contextmanager
def filled_node(folder: Path, sites: list[dict] = SITES,
                **node: object) -> Iterator[tuple[Node, Filled]]:
    """A running node (this process) over a store that fill() wrote before it started."""
    config = node_config(folder, sites=sites, **node)
    storage = Storage(Path(load_config(config).node.storage))
    storage.root.mkdir(parents=True, exist_ok=True)
    filled = fill(storage)
    with running_node(config) as running:
        yield running, filled


def csrf_of(html: str) -> str:
    found = set(CSRF.findall(html))
    assert len(found) == 1, found  # one token on the page, in every form
    return found.pop()


def section(html: str, name: str) -> str:
    """The text of one <section id=name> of the page."""
    match = re.search(rf'<section id="{name}".*?</section>', html, re.S)
    assert match is not None, f"no section {name}"
    return match.group(0)


def row(html: str, element_id: str) -> str:
    match = re.search(rf'<(tr|article)\b[^>]*\bid="{re.escape(element_id)}".*?</\1>', html, re.S)
    assert match is not None, f"no element {element_id}"
    return match.group(0)


# -- what the page shows --------------------------------------------------------------------------
def test_the_page_shows_health_queue_sites_studies_and_what_failed(tmp_path: Path) -> None:
    with filled_node(tmp_path) as (node, filled), httpx.Client(base_url=base_url(node)) as client:
        answer = client.get("/")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        html = answer.text
        assert "Healthy: every loop runs and the disk has room." in section(html, "health")
        assert "transcode running; forward running" in section(html, "health")
        queue = section(html, "queue")
        assert "local process pools" in queue and "<td>transcode</td><td>0</td>" in queue

        site = row(html, "site-a")
        assert "lossy JPEG 2000 at CR 20" in site and "from MG_A" in site
        assert '<span class="state done">3 done</span> · <span class="state failed">1 failed' in site
        assert "19.5 / 20.1 / 20.4" in site and "of 3 images" in site
        status, text = guideline_verdict(20.4, load_guidelines(), None)  # the audit's own verdict
        assert f"<b>{status}</b>: {text} (stored)" in site
        assert "<b>no results</b>" in site
        assert "pass-through (forwarded as received)" in row(html, "site-b")

        study = row(html, f"study-{filled.study}")
        assert "left breast <b>0.412</b> · right breast <b>0.087</b>" in study
        shown = re.findall(r'<img class="capture" src="/thumbnails/([0-9.]+)/([0-9.]+)\.png\?v=\d+"',
                           study)
        assert shown == [(filled.study, uid) for uid in filled.captures]  # in the node's order
        assert re.findall(r"<figcaption>(.*?)</figcaption>", study) == [
            "left · 1", "left · 2", "right · 3"]
        for uid in filled.captures:
            assert "<td>saliency capture</td>" in row(study, f"instance-{uid}")
        assert "<td>made here</td>" in row(study, f"instance-{filled.report}")
        for uid in filled.images[:3]:
            assert 'data-state="done"' in row(study, f"instance-{uid}")
        assert 'data-state="failed"' in row(study, f"instance-{filled.failed}")
        retrying = row(study, f"instance-{filled.retrying}")
        assert "0xA700" in retrying and re.search(r"tried again in (59|60) min \(", retrying)

        attention = section(html, "attention")
        failure = row(attention, f"failure-{filled.failed}")
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; could not be decoded" in failure
        assert "<script>alert" not in html  # autoescaped, everywhere
        assert f'name="uid" value="{filled.failed}"' in failure and "Retry</button>" in failure
        assert "Retry all 1 failed" in attention
        assert "0xA700 (Out of Resources)" in row(attention, f"retrying-{filled.retrying}")
        assert filled.refusal in attention and "BitsAllocated 7 is neither" in attention
        assert f"study-{filled.other_study}" in html


def test_the_page_reads_without_javascript_and_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    with filled_node(tmp_path) as (node, filled), httpx.Client(base_url=base_url(node)) as client:
        answer = client.get("/")
        html = answer.text
        assert '<noscript><meta http-equiv="refresh" content="10; url=/"></noscript>' in html
        assert re.search(r'<form method="post" action="/retry">', html)  # Retry: a plain form
        sources = re.findall(r'(?:src|href|action)="([^"]*)"', html)
        assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources)
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert answer.headers["cache-control"] == "no-store"
        for asset in ("/static/page.js", "/static/page.css"):
            assert client.get(asset).status_code == 200
        live = client.get("/live")
        assert live.status_code == 200 and "<html" not in live.text
        assert f'id="study-{filled.study}"' in live.text and 'id="health"' in live.text
        assert '<main id="live" data-src="/live"' in html


def test_thumbnails_are_pngs_rendered_from_the_captures_and_cached(tmp_path: Path) -> None:
    with filled_node(tmp_path) as (node, filled), httpx.Client(base_url=base_url(node)) as client:
        storage = node.storage
        html = client.get("/").text
        urls = re.findall(r'<img class="capture" src="([^"]+)"', html)
        assert len(urls) == 3
        for url, uid in zip(urls, filled.captures, strict=True):
            answer = client.get(url)
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
            image = Image.open(io.BytesIO(answer.content))
            assert image.format == "PNG" and image.mode == "RGB"
            assert max(image.size) == THUMBNAIL_SIDE and image.size[1] > image.size[0]
            pixels = np.asarray(image).astype(int)
            assert (pixels[..., 0] != pixels[..., 2]).any()  # the heat map's colour came along
            cached = storage.thumbnail_of(uid)
            assert cached.read_bytes() == answer.content
        first = storage.thumbnail_of(filled.captures[0]).stat().st_mtime_ns
        assert client.get(urls[0]).content == storage.thumbnail_of(filled.captures[0]).read_bytes()
        assert storage.thumbnail_of(filled.captures[0]).stat().st_mtime_ns == first  # served
        # A second inference rewrites the SC under its UID: a new URL, a new rendering.
        sc = storage.derived_of(filled.study) / "SC_LCC.dcm"
        make_capture(sc, filled.study, filled.captures[0], "L", "CC", 0.9, 1, shape=(300, 400))
        os.utime(sc, ns=(first + 10**9, first + 10**9))
        again = re.findall(r'<img class="capture" src="([^"]+)"', client.get("/").text)[0]
        assert again != urls[0]
        wide = Image.open(io.BytesIO(client.get(again).content))
        assert wide.size[0] > wide.size[1]  # rendered again from the new file
        # Only captures: never the SR, an image, or a path outside the study's folder.
        image = filled.images[0]
        for path in (f"/thumbnails/{filled.study}/{filled.report}.png",
                     f"/thumbnails/{filled.study}/{image}.png",
                     f"/thumbnails/{filled.other_study}/{filled.captures[0]}.png",
                     f"/thumbnails/..%2F..%2Fspool/{image}.png",
                     f"/thumbnails/{filled.study}/..%2FSC_LCC.png",
                     f"/thumbnails/{filled.study}/{filled.captures[0]}.dcm"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert "dicom" not in answer.headers["content-type"]


def test_a_node_that_cannot_say_how_it_is_says_so(tmp_path: Path) -> None:
    with filled_node(tmp_path) as (node, filled):
        web = node._http.app.state.web  # what the routes see

        def broken() -> dict:
            raise RuntimeError("job store locked")

        page = build_page(replace(web, health=broken), Captures(), "t", False)
        assert not page.health.ok
        assert page.health.summary == "The node cannot say how it is: job store locked"
        assert [s.uid for s in page.studies][:1] in ([filled.other_study], [filled.study])
        assert page.failures_total == 1 and page.failures[0].uid == filled.failed


# -- Retry, and what guards it ---------------------------------------------------------------------
def _failed_uids(node: Node) -> set[str]:
    return {f.uid for f in node.store.failures()}


def test_retry_is_refused_unless_it_comes_from_the_nodes_own_page(tmp_path: Path) -> None:
    with filled_node(tmp_path) as (node, filled), httpx.Client(base_url=base_url(node)) as client:
        origin = base_url(node)
        token = csrf_of(client.get("/").text)
        form = {"csrf": token, "uid": filled.failed}
        refused = [
            client.post("/retry", data={"uid": filled.failed}, headers={"Origin": origin}),
            client.post("/retry", data={**form, "csrf": "0" * 64}, headers={"Origin": origin}),
            client.post("/retry", data=form, headers={"Origin": "https://evil.example"}),
            client.post("/retry", data=form, headers={"Origin": "http://127.0.0.1:1"}),
            client.post("/retry", data=form, headers={"Referer": "https://evil.example/x"}),
            client.post("/retry", data=form),  # neither Origin nor Referer: not a page's form
            client.post("/retry", data=form, headers={"Origin": origin,
                                                      "Host": "evil.example"}),  # rebinding
        ]
        for answer in refused:
            assert answer.status_code == 403 and answer.text.startswith("refused: "), answer.text
            assert "\n" not in answer.text.rstrip("\n")
        assert filled.failed in _failed_uids(node)
        wrong = client.post("/retry", content=b'{"uid": 1}', headers={
            "Origin": origin, "Content-Type": "application/json"})
        assert wrong.status_code == 415
        assert client.post("/retry", data={**form, "uid": "../1"},
                           headers={"Origin": origin}).status_code == 400
        taken = client.post("/retry", data=form, headers={"Referer": origin + "/"})
        assert taken.status_code == 303 and taken.headers["location"] == "/?retried=1&gone=0"
        assert filled.failed not in _failed_uids(node)
        assert "1 failed item sent back to be tried again" in client.get("/?retried=1").text
        again = client.post("/retry", data=form, headers={"Origin": origin})
        assert again.headers["location"] in ("/?retried=0&gone=1", "/?retried=1&gone=0")


def test_a_retry_from_the_page_is_dicomcr_retry_and_the_node_delivers(small_cohort: Path,
                                                                         tmp_path: Path) -> None:
    """A real failure: the transcoder cannot write its output (a file stands where its folder
    goes). Retry from the page once it is gone: transcoded, forwarded, done."""
    image = sorted(small_cohort.rglob("*.dcm"))[0]
    uid = pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID
    config = node_config(tmp_path, sites=SITES)
    with running_node(config) as node, httpx.Client(base_url=base_url(node)) as client:
        blocker = node.storage.outputs_of(uid)
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("in the way")
        node_ = node.config.node
        sent = list(send(Peer("127.0.0.1", node_.port, node_.ae_title, "MG_A"), [image]))
        assert [r.ok for r in sent] == [True]
        deadline = time.monotonic() + 60
        while uid not in _failed_uids(node):
            assert time.monotonic() < deadline, "the transcode did not fail"
            time.sleep(0.1)
        html = client.get("/").text
        assert f'id="failure-{uid}"' in html
        blocker.unlink()
        taken = client.post("/retry", data={"csrf": csrf_of(html), "uid": uid},
                            headers={"Origin": base_url(node)})
        assert taken.status_code == 303
        archive = tmp_path / "archive"
        while not list(archive.rglob("*.dcm")):
            assert time.monotonic() < deadline, "the retried image was not delivered"
            time.sleep(0.1)
        while 'data-state="done"' not in row(client.get("/").text, f"instance-{uid}"):
            assert time.monotonic() < deadline, "the page does not show it done"
            time.sleep(0.1)
        (delivered,) = archive.rglob("*.dcm")
        assert pydicom.dcmread(delivered).SourceImageSequence[0].ReferencedSOPInstanceUID == uid


# -- the login form and its cookie ----------------------------------------------------------------
def test_a_browser_logs_in_with_a_form_and_its_cookie_opens_the_page_only(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token", OPERATOR_TOKEN)
    sites = [{**SITES[0], "dicomweb_token_file": str(write_token(tmp_path / "s", SITE_TOKEN))},
             SITES[1]]
    with filled_node(tmp_path / "n", sites, http_token_file=str(token)) as (node, filled):
        origin = base_url(node)
        cookie = f"dicomcr_session_{node.config.node.http_port}"
        browser = {"Accept": "text/html,application/xhtml+xml"}
        with httpx.Client(base_url=origin) as client:
            first = client.get("/", headers=browser)
            assert first.status_code == 303 and first.headers["location"] == "/login"
            plain = client.get("/")  # not a browser: Authentication's answer, no hint
            assert (plain.status_code, plain.text) == (401, "unauthorized\n")
            assert client.get("/live", headers=browser).status_code == 401
            form = client.get("/login")
            assert form.status_code == 200 and 'name="token" type="password"' in form.text
            for wrong in (OPERATOR_TOKEN[:-1], SITE_TOKEN, ""):
                answer = client.post("/login", data={"token": wrong}, headers={"Origin": origin})
                assert answer.status_code == 401 and "set-cookie" not in answer.headers
                assert "That token was not accepted." in answer.text
            assert client.post("/login", data={"token": OPERATOR_TOKEN},
                               headers={"Origin": "https://evil.example"}).status_code == 403
            logged = client.post("/login", data={"token": OPERATOR_TOKEN}, headers={"Origin": origin})
            assert logged.status_code == 303 and logged.headers["location"] == "/"
            set_cookie = logged.headers["set-cookie"]
            assert set_cookie.startswith(f"{cookie}=")
            for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=28800"):
                assert flag.lower() in set_cookie.lower(), set_cookie
            assert "secure" not in set_cookie.lower()  # plain HTTP on loopback
            assert OPERATOR_TOKEN not in set_cookie
            page = client.get("/", headers=browser)
            assert page.status_code == 200 and f'id="study-{filled.study}"' in page.text
            assert 'action="/logout"' in page.text
            assert client.get("/static/page.css").status_code == 200
            assert client.get("/live").status_code == 200
            # The cookie opens the page, not DICOMweb: senders and scripts send the header.
            stow = client.post("/dicomweb/studies", content=b"x", headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
            assert stow.status_code == 401
            session_csrf = csrf_of(page.text)
            assert client.post("/retry", data={"csrf": session_csrf, "uid": filled.failed},
                               headers={"Origin": "https://evil.example"}).status_code == 403
            out = client.post("/logout", data={"csrf": session_csrf}, headers={"Origin": origin})
            assert out.status_code == 303 and out.headers["location"] == "/login"
            assert client.get("/", headers=browser).status_code == 303  # the session is gone
            stale = client.post("/retry", data={"csrf": session_csrf}, headers={"Origin": origin})
            assert stale.status_code == 401
        # A script with the bearer header: its own CSRF token, no Origin needed (no browser
        # sends that header for another site).
        with httpx.Client(base_url=origin, headers={
                "Authorization": f"Bearer {OPERATOR_TOKEN}"}) as script:
            own = csrf_of(script.get("/").text)
            assert own != session_csrf
            everything = script.post("/retry", data={"csrf": own})  # Retry all: no uid
            assert everything.headers["location"] == "/?retried=1&gone=0"
            assert filled.failed not in _failed_uids(node)


def test_without_a_token_the_page_answers_only_to_this_machines_names(tmp_path: Path) -> None:
    with filled_node(tmp_path) as (node, _), httpx.Client(base_url=base_url(node)) as client:
        port = node.config.node.http_port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1"):
            assert client.get("/", headers={"Host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"10.1.2.3:{port}"):
            for path in ("/", "/live", "/login", "/static/page.css"):
                answer = client.get(path, headers={"Host": host})
                assert answer.status_code == 403 and "not this node's" in answer.text, (host, path)
        assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 200
        assert client.get("/login").headers["location"] == "/"  # nothing to log in to


@pytest.mark.parametrize("accept", ["text/html", "*/*"])
def test_unknown_paths_stay_behind_the_token(tmp_path: Path, accept: str) -> None:
    token = write_token(tmp_path / "token", OPERATOR_TOKEN)
    with filled_node(tmp_path / "n", http_token_file=str(token)) as (node, filled), \
            httpx.Client(base_url=base_url(node)) as client:
        for path in ("/no-such-page", f"/thumbnails/{filled.study}/{filled.captures[0]}.png",
                     "/static/page.css"):
            answer = client.get(path, headers={"Accept": accept})
            assert (answer.status_code, answer.text) == (401, "unauthorized\n"), path
