"""The operator page at `/`: what a PACS administrator looks at first.

    GET  /                    the page: health in words, what needs attention (failures and
                              refusals with why, forwarding retries with the next try), the work
                              queue, each site (policy, counts, achieved CR, the guideline
                              verdict; the model and detectability verdicts are `dicomcr
                              audit`'s), the last studies with their images and thumbnails
    GET  /live                the same page's live part alone (what the script swaps)
    POST /retry               Retry: one failed item (`uid`) or every failed one, as
                              `dicomcr retry` does (dicomcr.jobs.admin.retry_failed, at the
                              policy recorded when it was received), then the loops are woken
    GET  /thumbnails/{study}/{sop}.png   a saliency capture as a small PNG (thumbnails.py)
    GET  /static/...          its stylesheet and script

Everything here is behind the node's token like every path but /healthz and /metrics (a browser
logs in with a form: login.py). Retry is a POST that login.py's checks guard against other sites
(Origin or Referer, a CSRF token tied to the session or the bearer token, a SameSite=Strict
session cookie; read login.py for why each).

It updates itself while work flows: a small script (static/page.js) fetches /live every
POLL_SECONDS and swaps it in when it changed; without JavaScript a meta refresh (in <noscript>)
reloads the page every NO_SCRIPT_REFRESH seconds, and Retry is a plain form. Server-rendered
with Jinja2, autoescape on; nothing is loaded from outside the node (its Content-Security-Policy
says so to the browser).

The page composes the job store's read models (recent_studies, counts, achieved_crs, failures
and refusals through read_failed, retrying), the node's health report, the work queue's
describe() and the audit's guideline verdict; it holds no state but the header cache of the
captures (thumbnails.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dicomcr.audit.audit import Guideline, guideline_verdict, load_guidelines
from dicomcr.audit.verdicts import GuidelineStatus, ModelStatus
from dicomcr.config import Compression, Config, Policy
from dicomcr.dicom.uids import check_uid
from dicomcr.jobs import Counts, FailedWhat, InstanceState, ObjectKind, StudyState
from dicomcr.jobs.admin import read_failed, retry_failed
from dicomcr.jobs.records import AchievedCR, ImageView, StudyView

from ..health import NodeStatus
from ..stages.context import Loop
from ..workqueue import QueueView
from .context import WebContext
from .login import PAGE_HEADERS, SESSION, checked_form
from .thumbnails import Capture, Captures, thumbnail

POLL_SECONDS = 3  # how often the script fetches /live
NO_SCRIPT_REFRESH = 10  # how often the page reloads itself without JavaScript
RECENT_STUDIES = 20
FAILURES_SHOWN = 50  # the rest: `dicomcr status --failed`
RETRYING_SHOWN = 20
FOLDER = Path(__file__).parent
TEMPLATES = Environment(loader=FileSystemLoader(FOLDER / "templates"), autoescape=True,
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
# What each /healthz status means, in a sentence.
HEALTH_WORDS = {
    NodeStatus.OK: "Healthy: every loop runs and the disk has room.",
    NodeStatus.STARTING: "Starting: listening, its loops not all running yet.",
    NodeStatus.LOW_DISK: "Low on disk: new instances are answered Out of Resources; the rest "
                         "goes on.",
    NodeStatus.STOPPING: "Stopping: draining what it has after a stop signal.",
    NodeStatus.FAILED: "Failed: a loop ended or the job store fails; the node exits so that its "
                       "service manager restarts it.",
}
SIDES = {"L": "left", "R": "right"}
TEMPLATES.globals["sides"] = SIDES
PAGE_PREFIXES = ("/thumbnails/", "/static/")
PAGE_PATHS = frozenset({"/", "/live", "/retry"})


def is_page(path: str) -> bool:
    """Whether `path` belongs to the operator page (what a login session opens)."""
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIXES)


# -- the page model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthView:
    """The node's /healthz report in words."""

    status: str
    ok: bool
    summary: str
    warnings: tuple[str, ...]
    loops: tuple[tuple[str, str], ...]  # (loop, running or why it stopped)
    disk: str
    queue_depth: int | None
    studies: tuple[tuple[str, int], ...]  # (study state, how many)
    uptime: str


@dataclass(frozen=True)
class Verdict:
    """One of the audit's verdicts on a site, as the page says it."""

    status: str
    text: str
    bad: bool = False


@dataclass(frozen=True)
class SiteView:
    """One site: who sends for it, its policy and model, what it has, and the audit's verdicts."""

    name: str
    callers: tuple[str, ...]  # calling AE titles ('*': any)
    policy: str
    inference: str
    images: tuple[tuple[InstanceState, int], ...]
    derived: tuple[tuple[InstanceState, int], ...]
    achieved: AchievedCR | None
    guideline: Verdict
    model: Verdict
    detectability: Verdict | None = None  # the observers' verdict: a slot for a later change


@dataclass(frozen=True)
class InstanceLine:
    """One instance of a study: an image or an object the node made."""

    uid: str
    kind: ObjectKind
    label: str  # "image", "saliency capture", or "made here" for another object (the SR)
    state: InstanceState
    achieved_cr: str  # "19.8", or "" when not lossy or not transcoded yet
    note: str  # the error, the next try


@dataclass(frozen=True)
class StudyLine:
    """One of the last studies: its images, the probability per breast, its captures."""

    uid: str
    site: str
    state: StudyState
    error: str
    received: str
    probabilities: tuple[tuple[str, float], ...]  # (breast, P(malignant))
    images: tuple[InstanceLine, ...]
    derived: tuple[InstanceLine, ...]
    captures: tuple[Capture, ...]


@dataclass(frozen=True)
class FailureLine:
    uid: str
    what: FailedWhat
    site: str
    reason: str
    when: str


@dataclass(frozen=True)
class RefusalLine:
    name: str
    reason: str


@dataclass(frozen=True)
class RetryLine:
    """An object whose forwarding failed and that waits for its next try."""

    uid: str
    site: str
    kind: ObjectKind
    attempts: int
    error: str
    due: str


@dataclass(frozen=True)
class Page:
    ae_title: str
    updated: str
    health: HealthView
    queue: QueueView | None
    queue_error: str
    sites: tuple[SiteView, ...]
    studies: tuple[StudyLine, ...]
    failures: tuple[FailureLine, ...]
    failures_total: int
    refusals: tuple[RefusalLine, ...]
    retrying: tuple[RetryLine, ...]
    csrf: str
    logged_in: bool  # by a session cookie: the page offers to log out
    poll_seconds: int = POLL_SECONDS
    no_script_refresh: int = NO_SCRIPT_REFRESH


# -- words ------------------------------------------------------------------------------------
def clock(when: float, now: float) -> str:
    """A time as the page says it: the time of day today, the date as well otherwise."""
    same_day = time.localtime(when)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(when))


def span(seconds: float) -> str:
    """A duration in the largest unit that fits: 42 s, 7 min, 3 h, 2 d."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def due(when: float, now: float) -> str:
    """When a retry falls due: "in 12 s (14:03:22)", or "now"."""
    return "now" if when <= now else f"in {span(when - now)} ({clock(when, now)})"


def policy_words(policy: Policy) -> str:
    if policy.kind is Compression.CR:
        return f"lossy JPEG 2000 at CR {policy}"
    if policy.kind is Compression.LOSSLESS:
        return "lossless JPEG 2000"
    return "pass-through (forwarded as received)"


def health_view(report: dict) -> HealthView:
    """The /healthz report (services/node.py, Node.health) in words."""
    status = str(report.get("status", "unknown"))
    disk = report.get("disk") or {}
    free, reserve = disk.get("free_mb"), disk.get("reserve_mb")
    disk_words = "" if free is None else f"{free / 1024:.1f} GiB free, " + (
        f"{reserve / 1024:.1f} GiB kept in reserve" if reserve else "no reserve kept")
    return HealthView(
        status, status == NodeStatus.OK, HEALTH_WORDS.get(status, f"Status {status}."),
        tuple(report.get("warnings", ())),
        tuple((loop, state) for loop, state in (report.get("loops") or {}).items()),
        disk_words, report.get("queue_depth"),
        tuple((str(state), n) for state, n in sorted((report.get("studies") or {}).items())),
        span(float(report.get("uptime_seconds", 0))))


@functools.cache
def _guidelines() -> list[Guideline]:
    """The audit's guideline table, read once."""
    return load_guidelines()


def guideline_words(achieved: AchievedCR | None, policy: Policy | None) -> Verdict:
    """The audit's guideline verdict on the highest CR the site stores, or, before it stores
    any, on its configured CR (the audit judges against every guideline of the table)."""
    if achieved is not None:
        highest, said = achieved.maximum, "stored"
    elif policy is not None and policy.cr is not None:
        highest, said = policy.cr, "configured, nothing stored yet"
    else:
        return Verdict("-", "nothing lossy to judge")
    try:
        status, text = guideline_verdict(highest, _guidelines(), None)
    except ValueError as exc:
        return Verdict("unavailable", str(exc), True)
    return Verdict(status.value, f"{text} ({said})", status is GuidelineStatus.VIOLATION)


def site_views(web: WebContext, counts: Counts, achieved: dict[str, AchievedCR]
               ) -> tuple[SiteView, ...]:
    """The configured sites, then any other the store has rows of (an unknown AE's, or one
    removed from the configuration)."""
    config: Config = web.ctx.config
    names = [site.name for site in config.sites]
    names += sorted(set(counts) - set(names))
    views = []
    for name in names:
        site = config.site_for_name(name)
        policy = site.policy if site is not None else None
        skipped = web.skipped(name)
        kinds = counts.get(name, {})
        views.append(SiteView(
            name, tuple(site.calling_ae) if site else (),
            policy_words(policy) if policy else "not in the configuration now",
            f"off: {skipped}" if skipped else "on",
            tuple((state, kinds.get(ObjectKind.IMAGE, {}).get(state, 0)) for state in InstanceState),
            tuple((state, kinds.get(ObjectKind.DERIVED, {}).get(state, 0))
                  for state in InstanceState),
            achieved.get(name), guideline_words(achieved.get(name), policy),
            Verdict(ModelStatus.NO_RESULTS.value, "the configuration names no cross-CR results "
                    "(dicomcr audit --results judges the model at the site's CR)")))
    return tuple(views)


def _line(view: ImageView, now: float, captures: frozenset[str] = frozenset()) -> InstanceLine:
    note = view.error
    if view.next_attempt_at > now and view.state in (InstanceState.RECEIVED,
                                                      InstanceState.TRANSCODED):
        note = f"{note}; tried again {due(view.next_attempt_at, now)}" if note else \
            f"tried again {due(view.next_attempt_at, now)}"
    achieved = "" if view.achieved_cr is None else f"{view.achieved_cr:.1f}"
    label = "image" if view.kind is ObjectKind.IMAGE else \
        "saliency capture" if view.uid in captures else "made here"
    return InstanceLine(view.uid, view.kind, label, view.state, achieved, note)


def study_line(study: StudyView, captures: Captures, now: float) -> StudyLine:
    found = (captures.of(v.outputs[0]) for v in study.instances
             if v.kind is ObjectKind.DERIVED and v.outputs)
    shown = sorted((c for c in found if c is not None), key=lambda c: (c.number, c.uid))
    uids = frozenset(c.uid for c in shown)
    images = tuple(_line(v, now) for v in study.instances if v.kind is ObjectKind.IMAGE)
    derived = tuple(_line(v, now, uids) for v in study.instances if v.kind is ObjectKind.DERIVED)
    probabilities = tuple((SIDES.get(side, side), p)
                          for side, p in sorted(study.probabilities.items()))
    return StudyLine(study.uid, study.site, study.state, study.error,
                     clock(study.last_received_at, now), probabilities, images, derived,
                     tuple(shown))


def build_page(web: WebContext, captures: Captures, csrf: str, logged_in: bool,
               now: float | None = None) -> Page:
    """The page model of the node now."""
    now = time.time() if now is None else now
    ctx = web.ctx
    try:
        health = health_view(web.health())
    except Exception as exc:  # as /healthz: a node that cannot say how it is, is not well
        health = HealthView("unknown", False, f"The node cannot say how it is: {exc}", (), (),
                            "", None, (), "")
    try:
        queue, queue_error = ctx.queue.describe(), ""
    except Exception as exc:
        queue, queue_error = None, f"{type(exc).__name__}: {exc}"
    store = ctx.store
    failed = read_failed(ctx.storage)
    return Page(
        ctx.config.node.ae_title, clock(now, now), health, queue, queue_error,
        site_views(web, store.counts(), store.achieved_crs()),
        tuple(study_line(s, captures, now) for s in store.recent_studies(RECENT_STUDIES)),
        tuple(FailureLine(f.uid, f.what, f.site, f.error, clock(f.when, now))
              for f in failed.failures[:FAILURES_SHOWN]),
        len(failed.failures),
        tuple(RefusalLine(r.path.name, r.reason) for r in failed.refusals),
        tuple(RetryLine(job.uid, job.site, job.kind, job.attempts, error, due(when, now))
              for job, error, when in store.retrying(RETRYING_SHOWN)),
        csrf, logged_in)


# -- the routes -------------------------------------------------------------------------------
def _page_of(request: Request) -> Page:
    state = request.app.state
    return build_page(state.web, state.captures, state.sessions.csrf_token(request),
                      request.scope.get("state", {}).get(SESSION) is not None)


def _count(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() and len(value) < 7 else 0


def retry_note(retried: int, gone: int) -> str:
    """What the page says after a Retry (Post/Redirect/Get: the numbers come in the URL)."""
    parts = []
    if retried:
        parts.append(f"{retried} failed item{'s' if retried != 1 else ''} sent back to be tried "
                     "again, at the policy recorded when received.")
    if gone:
        parts.append(f"{gone} had already left the failures (retried from elsewhere?).")
    return " ".join(parts)


def page(request: Request) -> Response:
    """The whole page."""
    note = retry_note(_count(request.query_params.get("retried")),
                      _count(request.query_params.get("gone")))
    html = TEMPLATES.get_template("page.html").render(page=_page_of(request), note=note)
    return HTMLResponse(html, headers=PAGE_HEADERS)


def live(request: Request) -> Response:
    """The live part of the page alone, for the script that swaps it in."""
    html = TEMPLATES.get_template("live.html").render(page=_page_of(request))
    return HTMLResponse(html, headers=PAGE_HEADERS)


def retry_items(web: WebContext, uids: Iterable[str] | None) -> tuple[int, int]:
    """`dicomcr retry` for `uids` (None: every failed item), then the loops woken so that the
    node takes them up at once; (retried, no longer failed)."""
    config = web.ctx.config

    report = retry_failed(web.ctx.storage, None if uids is None else list(uids),
                          config.policy_of)
    web.ctx.wake(Loop.TRANSCODE, Loop.INFER)
    return len(report.retried), len(report.unknown)


async def retry(request: Request) -> Response:
    """Retry one failed item (the form's `uid`) or, without one, every failed item."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    uid = form.get("uid", "").strip()
    if uid:
        try:
            check_uid(uid, "uid")
        except ValueError as exc:
            return PlainTextResponse(f"{exc}\n", 400)
    retried, gone = await run_in_threadpool(retry_items, request.app.state.web,
                                            [uid] if uid else None)
    return RedirectResponse(f"/?retried={retried}&gone={gone}", 303)


def thumbnail_png(request: Request) -> Response:
    """The PNG of one saliency capture the node made for a study; 404 for anything else."""
    state = request.app.state
    try:
        study = check_uid(request.path_params["study"], "study")
        sop = check_uid(request.path_params["sop"], "sop")
    except ValueError:
        return PlainTextResponse("no such capture\n", 404)
    storage = state.web.ctx.storage
    capture = state.captures.in_study(storage, study, sop)
    if capture is None:
        return PlainTextResponse("no such capture\n", 404)
    return FileResponse(thumbnail(storage, capture), media_type="image/png", headers={
        "Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})


def page_routes() -> list[BaseRoute]:
    """The page's routes, for services/web/app.py."""
    return [Route("/", page, methods=["GET"]),
            Route("/live", live, methods=["GET"]),
            Route("/retry", retry, methods=["POST"]),
            Route("/thumbnails/{study}/{sop}.png", thumbnail_png, methods=["GET"]),
            Mount("/static", StaticFiles(directory=FOLDER / "static"), name="static")]
