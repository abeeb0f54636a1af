"""The node's HTTP endpoint: /healthz (JSON) and /metrics (Prometheus text format 0.0.4)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dicomcr.jobs import Counts

from .metrics import Gauge, Metrics


def serve_http(host: str, port: int, metrics: Metrics,
               counts: Callable[[], Counts],
               health: Callable[[], dict],
               gauges: Callable[[], Sequence[Gauge]] = tuple) -> ThreadingHTTPServer:
    """Start the endpoint in a daemon thread; the caller shuts it down. /healthz answers 503
    whenever the report's status is not "ok"."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                if self.path == "/metrics":
                    body = metrics.prometheus(counts(), gauges()).encode()
                    kind = "text/plain; version=0.0.4; charset=utf-8"
                    code = 200
                elif self.path == "/healthz":
                    report = health()
                    body = json.dumps(report).encode()
                    kind, code = "application/json", 200 if report["status"] == "ok" else 503
                else:
                    body, kind, code = b"not found\n", "text/plain", 404
            except Exception as exc:  # the node cannot even say how it is: that is unhealthy
                body = f"{type(exc).__name__}: {exc}\n".encode()
                kind, code = "text/plain; charset=utf-8", 503
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet: the node logs
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
