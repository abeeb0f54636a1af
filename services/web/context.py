"""What the HTTP face reads of the running node and calls on it, handed over once by Node.start:
its shared parts (configuration, storage, job store, work queue, metrics, waking the loops), the
disk reserve, the credentials, and the node's own reports (/healthz, the /metrics gauges)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dicomcr.jobs import DiskReserve

from ..metrics import Gauge
from ..stages.context import NodeContext
from .auth import Credentials


@dataclass(frozen=True)
class WebContext:
    """The node as its HTTP routes see it (request.app.state.web)."""

    ctx: NodeContext
    disk: DiskReserve
    credentials: Credentials
    health: Callable[[], dict]  # what /healthz reports; 503 unless its status is "ok"
    gauges: Callable[[], Sequence[Gauge]]  # the node's own samples for /metrics
    skipped: Callable[[str], str | None]  # why a site's studies have no inference, or None
