"""The node's HTTP face as one Starlette app: /healthz and /metrics (their contracts unchanged
since http.server served them), STOW-RS in, the operator page at `/` (page.py, its login in
login.py), and whatever routes the caller adds: `create_app(web, routes=[...])`, the added routes
first, so that one of them may take a path of the node's own. Each route finds the node in
`request.app.state.web` (a WebContext) and who asks in `request.state.principal`
(services/web/auth.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import STOW_PATH, Authentication
from .context import WebContext
from .login import Login, Sessions
from .page import TEMPLATES, is_page, page_routes
from .stow import StowReceiver, store_instances
from .thumbnails import Captures

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def healthz(request: Request) -> Response:
    """The node's health as JSON: 200 when its status is "ok", 503 otherwise (or when it cannot
    even say how it is)."""
    web: WebContext = request.app.state.web
    try:
        report = web.health()
    except Exception as exc:  # the node cannot even say how it is: that is unhealthy
        return PlainTextResponse(f"{type(exc).__name__}: {exc}\n", 503)
    return Response(json.dumps(report), 200 if report["status"] == "ok" else 503,
                    media_type="application/json")


def metrics(request: Request) -> Response:
    """Counters, stage durations, the job store's gauges and the node's own (Prometheus text
    format 0.0.4)."""
    web: WebContext = request.app.state.web
    try:
        text = web.ctx.metrics.prometheus(web.ctx.store.counts(), web.gauges())
    except Exception as exc:
        return PlainTextResponse(f"{type(exc).__name__}: {exc}\n", 503)
    return Response(text, media_type=PROMETHEUS_TEXT)


def create_app(web: WebContext, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The app of one node: `routes` first, then the node's own; every path but /healthz,
    /metrics and the login form behind the authentication (a browser's session cookie turned
    into the bearer token for the page's paths first: login.py)."""
    sessions = Sessions(web.credentials)
    app = Starlette(
        routes=[*routes,
                *page_routes(),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"]),
                Route(STOW_PATH, store_instances, methods=["POST"]),
                Route(STOW_PATH + "/{study:path}", store_instances, methods=["POST"])],
        middleware=[Middleware(Login, sessions=sessions, is_page=is_page, templates=TEMPLATES,
                               http_host=web.ctx.config.node.http_host),
                    Middleware(Authentication, credentials=web.credentials,
                               http_host=web.ctx.config.node.http_host)])
    app.state.web = web
    app.state.stow = StowReceiver(web)
    app.state.sessions = sessions
    app.state.captures = Captures()
    return app
