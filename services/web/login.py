"""The browser's way in to the operator page, and what protects the page's forms from other sites.

A browser cannot send a bearer token by itself, so where the node has a token (node.http_token,
required beyond loopback) the page has a login form: a form, not HTTP basic authentication,
because a form can be left (POST /logout) and its cookie can be HttpOnly and SameSite.

    GET /login    the form (public, as /healthz and /metrics are; it shows nothing of the node)
    POST /login   the token, checked as a bearer token is (Credentials.identify): the operator's
                  opens a session, anything else is a 401 with the form again, never a hint
    POST /logout  the session ends (a form of the page, with its CSRF token)

A session is 32 random bytes in a cookie named after the port (two nodes on one host keep
theirs apart): HttpOnly (no script reads it), SameSite=Strict (no request another site starts
carries it), Secure over HTTPS, for SESSION_SECONDS. The node keeps, in memory, the token the
session was opened with, and this middleware, which runs before Authentication, hands it on as
the bearer header, so that Authentication stays the one place that decides; it does so for the
page's paths only (`is_page`): the cookie opens no DICOMweb path, senders and scripts send the
header. Sessions end with the process. GET / without any credentials, from a browser (Accept:
text/html), is sent to the form; every other request without them gets Authentication's 401.

A POST of the page (Retry, logout) is refused, 403 with one line, unless:
  1. its Origin, or without one its Referer, is this node's own origin (a POST with neither is
     taken only from a client that sent its own Authorization header: a script, not a browser,
     since no other site can make a browser send one);
  2. it carries the CSRF token of the page it was sent from: per session a random one; for a
     client with its own bearer header an HMAC of that token; with no token configured an HMAC
     of "anonymous"; the HMACs under a key drawn when the app starts. Another site can post to
     the node but cannot read a page of it, so cannot know the token.
And where the node has no token (loopback only), every page path needs a Host header naming this
machine (localhost, a loopback address or node.http_host): a site whose name is made to resolve
to 127.0.0.1 (DNS rebinding) would otherwise be same-origin with the page and read its token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from jinja2 import Environment
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import Credentials, Principal, Role, host_is_local

SESSION_SECONDS = 8 * 3600  # one shift; then the form again
MAX_SESSIONS = 256  # the oldest goes when a new one would pass this
FORM_LIMIT = 8192  # bytes of a form body: a token, a UID, a CSRF token
LOGIN_PATH, LOGOUT_PATH = "/login", "/logout"
SESSION = "session"  # the key of the request's Session in its state, when it came with one
OWN_HEADER = "own_authorization"  # the key saying the client sent its own Authorization header
PAGE_HEADERS = {  # every page of the operator face: nothing from elsewhere, no framing
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class FormError(ValueError):
    """A form body that cannot be read (too large, not urlencoded); its status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Session:
    """One browser's login: the token it was opened with, the CSRF token of its forms, and
    when it ends."""

    token: str
    csrf: str
    expires: float


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Sessions:
    """The node's open sessions (in memory) and the key of its CSRF tokens; thread-safe."""

    def __init__(self, credentials: Credentials, lifetime: float = SESSION_SECONDS) -> None:
        self.credentials, self.lifetime = credentials, lifetime
        self._key = secrets.token_bytes(32)
        self._open: dict[bytes, Session] = {}  # by the digest of the cookie's value
        self._lock = threading.Lock()

    def open(self, token: str) -> str | None:
        """A new session's cookie value when `token` is the operator's; None otherwise."""
        if self.credentials.identify(f"Bearer {token}") != Principal(Role.OPERATOR):
            return None
        value = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            for key in [k for k, s in self._open.items() if s.expires <= now]:
                del self._open[key]
            while len(self._open) >= MAX_SESSIONS:
                del self._open[min(self._open, key=lambda k: self._open[k].expires)]
            self._open[_digest(value)] = Session(token.strip(), secrets.token_hex(32),
                                                 now + self.lifetime)
        return value

    def find(self, value: str | None) -> Session | None:
        """The live session of a cookie's value, or None."""
        if not value:
            return None
        with self._lock:
            session = self._open.get(_digest(value))
        return session if session is not None and session.expires > time.time() else None

    def close(self, value: str | None) -> None:
        if value:
            with self._lock:
                self._open.pop(_digest(value), None)

    def csrf_token(self, request: HTTPConnection) -> str:
        """The CSRF token of the forms of a page served to `request` (see the module's text)."""
        session: Session | None = request.scope.get("state", {}).get(SESSION)
        if session is not None:
            return session.csrf
        authorization = request.headers.get("authorization")
        subject = b"anonymous" if authorization is None else b"bearer " + _digest(authorization)
        return hmac.new(self._key, subject, hashlib.sha256).hexdigest()


def cookie_name(scope: Scope) -> str:
    """The session cookie's name: per port, as cookies are per host, not per port."""
    server = scope.get("server")
    return f"dicomcr_session_{server[1]}" if server and server[1] else "dicomcr_session"


def own_origin(scope: Scope) -> str:
    """This node's origin as the request addressed it: scheme://host[:port]."""
    return f"{scope.get('scheme', 'http')}://{Headers(scope=scope).get('host', '')}".lower()


def cross_site(request: Request) -> str | None:
    """Why a POST must not be taken as from the node's own page, or None (checks 1 and 2)."""
    headers = request.headers
    origin = headers.get("origin")
    if origin is None or origin == "null":
        referer = headers.get("referer")
        if referer is not None:
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
    if origin is None:
        if not request.scope.get("state", {}).get(OWN_HEADER):
            return "a form post without Origin or Referer"
    elif origin.lower() != own_origin(request.scope):
        return f"a form post from {origin}, not from this node's page"
    return None


async def read_form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body of at most FORM_LIMIT bytes, the first value
    of each name; FormError otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FormError(415, "expected a form (application/x-www-form-urlencoded)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            raise FormError(413, f"a form of more than {FORM_LIMIT} bytes")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise FormError(400, "a form that is not UTF-8") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


async def checked_form(request: Request) -> dict[str, str] | Response:
    """The form of a POST from the node's own page, or the 403 (or 4xx) that refuses it."""
    why = cross_site(request)
    if why is not None:
        return refused(why)
    try:
        form = await read_form(request)
    except FormError as exc:
        return PlainTextResponse(f"{exc}\n", exc.status)
    expected = request.app.state.sessions.csrf_token(request)
    if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        return refused("the form's CSRF token is missing or stale: reload the page and try again")
    return form


def refused(why: str) -> PlainTextResponse:
    return PlainTextResponse(f"refused: {why}\n", 403)


class Login:
    """ASGI middleware before Authentication: the login form, the session cookie turned into
    the bearer header for the page's paths, and the Host check of a node without a token."""

    def __init__(self, app: ASGIApp, sessions: Sessions, is_page: Callable[[str], bool],
                 templates: Environment, http_host: str) -> None:
        self.app, self.sessions, self.is_page = app, sessions, is_page
        self.templates, self.http_host = templates, http_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        ours = path in (LOGIN_PATH, LOGOUT_PATH)
        if not (ours or self.is_page(path)):
            await self.app(scope, receive, send)
            return
        required = self.sessions.credentials.token_required
        if not required and not host_is_local(scope, self.http_host):
            host = Headers(scope=scope).get("host", "")
            await refused(f"the host name {host!r} is not this node's: open the page by its "
                          "loopback address")(scope, receive, send)
            return
        request = Request(scope, receive)
        state = scope.setdefault("state", {})
        if "authorization" in request.headers:
            state[OWN_HEADER] = True
        else:
            session = self.sessions.find(request.cookies.get(cookie_name(scope)))
            if session is not None:
                state[SESSION] = session
                scope = {**scope, "headers": [*scope["headers"],
                                              (b"authorization", f"Bearer {session.token}".encode())]}
                request = Request(scope, receive)
            elif required and path == "/" and scope["method"] == "GET" and \
                    "text/html" in request.headers.get("accept", ""):
                await RedirectResponse(LOGIN_PATH, 303)(scope, receive, send)
                return
        if path == LOGIN_PATH:
            response = await self._login(request, required)
        elif path == LOGOUT_PATH:
            response = await self._logout(request)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _form(self, status: int = 200, said: str = "") -> HTMLResponse:
        html = self.templates.get_template("login.html").render(said=said)
        return HTMLResponse(html, status, headers=PAGE_HEADERS)

    async def _login(self, request: Request, required: bool) -> Response:
        if not required:  # nothing to log in to: the page is open on loopback
            return RedirectResponse("/", 303)
        if request.method == "GET":
            return self._form()
        if request.method != "POST":
            return PlainTextResponse("method not allowed\n", 405)
        if request.headers.get("origin") not in (None, "null", own_origin(request.scope)):
            return refused("a login from another site")
        try:
            form = await read_form(request)
        except FormError as exc:
            return PlainTextResponse(f"{exc}\n", exc.status)
        value = self.sessions.open(form.get("token", ""))
        if value is None:
            return self._form(401, "That token was not accepted.")
        response = RedirectResponse("/", 303)
        response.set_cookie(cookie_name(request.scope), value, max_age=int(self.sessions.lifetime),
                            path="/", httponly=True, samesite="strict",
                            secure=request.scope.get("scheme") == "https")
        return response

    async def _logout(self, request: Request) -> Response:
        if request.method != "POST":
            return PlainTextResponse("method not allowed\n", 405)
        form = await checked_form(request)
        if isinstance(form, Response):
            return form
        name = cookie_name(request.scope)
        self.sessions.close(request.cookies.get(name))
        response = RedirectResponse(LOGIN_PATH, 303)
        response.delete_cookie(name, path="/", httponly=True, samesite="strict",
                               secure=request.scope.get("scheme") == "https")
        return response
