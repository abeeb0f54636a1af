"""uvicorn in a thread of the node's process, serving the app of services/web/app.py.

Why uvicorn (and Starlette): the established ASGI server and toolkit; one event loop serves the
probes, the operator page and many STOW-RS bodies at once, each streamed with backpressure
(uvicorn stops reading a socket while the app has a chunk pending), which http.server's thread
per request could not do without holding bodies in memory. The node keeps the process, its
signals and its logging: uvicorn gets a socket bound here (a port in use is the caller's
OSError, at once), no signal handlers (it runs outside the main thread), no log config, and
says only warnings (the node logs what it serves and refuses).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import threading
import time

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from dicomcr.config import TLS

from .auth import PEER_CN, common_name

STARTED_WITHIN = 30.0  # seconds for uvicorn to start serving on the bound socket
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this


def https_context(tls: TLS) -> ssl.SSLContext:
    """The HTTPS context of the node's certificate (TLS 1.2 or later, as for DICOM). With the
    CA, a client certificate is asked for and verified when one is presented: it may name a
    STOW-RS sender's site, and a client without one still reaches /healthz or uses a token."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.ca is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(tls.ca)
    return context


class PeerAwareH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, giving each request of a connection the Common Name of the
    client certificate the TLS handshake verified (request state PEER_CN, None without one)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = transport.get_extra_info("ssl_object")
        peer = common_name(tls.getpeercert()) if tls is not None else None
        self.app_state = {**self.app_state, PEER_CN: peer}


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6); OSError when it cannot be had."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    """One ASGI app on host:port, served by uvicorn in a daemon thread. `start` returns once it
    serves (OSError when the port is taken); `stop` stops accepting, lets the requests in flight
    finish for up to `grace` seconds, then closes."""

    def __init__(self, app: ASGIApp, host: str, port: int, tls: ssl.SSLContext | None = None,
                 grace: float = 60.0) -> None:
        self.app, self.host, self.port, self.tls, self.grace = app, host, port, tls, grace
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def start(self) -> None:
        self._socket = sock = listen(self.host, self.port)
        self.port = sock.getsockname()[1]  # the one the system chose for port 0
        tls = self.tls
        config = uvicorn.Config(
            self.app, http=PeerAwareH11, lifespan="off", log_config=None, log_level="warning",
            access_log=False, server_header=False, timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=math.ceil(self.grace),
            ssl_context_factory=(lambda *_: tls) if tls is not None else None)
        config.load()
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTED_WITHIN
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the HTTP server did not start within {STARTED_WITHIN:g} s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.grace + 5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
