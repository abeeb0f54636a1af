"""The node: four stages over one job store, each in a thread of its own.

    receive    (stages/receive.py)    C-STORE in; acknowledged once durable in the spool
    web        (web/)                 /healthz, /metrics, STOW-RS in (Starlette on uvicorn)
    transcode  (stages/transcode.py)  each instance at its site's policy, through the work queue
    infer      (stages/infer.py)      each complete study classified, through the work queue
    forward    (stages/forward.py)    images and derived objects to their destinations
    retention  (stages/retention.py)  files of delivered objects deleted (node.retention_days)

A stage with nothing to do sleeps until another wakes it (an instance received, a task
finished) or its next retry falls due (stages/context.py): an idle node costs no CPU. What the
transcode and inference stages share, every way a task comes back, is in stages/queued.py.

The work queue (services/workqueue) is where transcoding and inference run: local process pools
(`queue: local`, the default) or Celery workers on RabbitMQ (`queue: amqp://...`). The job store
(dicomcr.jobs) is the durable record: what a stage hands out is marked queued, and what a dead
node had queued is queued again when it starts.

Faults cost a retry, never an image or a stall: a worker that dies is replaced and its job
counted and queued again (at `node.max_worker_deaths` it fails, its source quarantined); a full
disk answers Out of Resources and puts work back for later; a stage whose loop ends on its own
turns /healthz to 503 and makes `serve_forever` exit non-zero, so that the service manager
restarts the node and the job store resumes the work.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from starlette.routing import BaseRoute

from dicomcr.config import UNKNOWN_SITE, Config
from dicomcr.jobs import DiskReserve, DiskSpace, JobStore, Storage, StoreError, queue_depth

from .health import NodeStatus
from .metrics import Gauge, Metrics
from .stages.context import DISK_FULL_SHOWN_SECONDS, Loop, NodeContext
from .stages.forward import ForwardStage
from .stages.infer import InferenceStage, check_models
from .stages.receive import ReceiveStage
from .stages.retention import RetentionStage
from .stages.transcode import TranscodeStage
from .web import Credentials, TokenError, WebContext, WebServer, create_app, https_context
from .workqueue import TaskKind, open_queue

log = logging.getLogger("dicomcr.node")

EXIT_LOOP_FAILED = 70  # sysexits' EX_SOFTWARE: a loop of the node ended on its own
DEATH_METRICS = {TaskKind.TRANSCODE: "transcode_worker_deaths",
                 TaskKind.INFER: "inference_worker_deaths"}


class NodeError(RuntimeError):
    """The node cannot start (a port in use, an unreadable token); the message says what to
    change."""


@dataclass(frozen=True)
class LoopFailure:
    """A loop that ended for a reason other than shutdown."""

    loop: Loop
    error: str

    def __str__(self) -> str:
        return f"{self.loop.value} loop stopped: {self.error}"


class Stage(Protocol):
    """A stage run by a loop: `step` does one round (sleeping until woken or due when there is
    nothing to do); `busy` says whether work handed out must still come back before the node
    stops."""

    def step(self, accepting: bool) -> None: ...

    def busy(self) -> bool: ...


class Node:
    """One running node; `start` returns at once, `stop` drains and returns. `web_routes`: more
    routes for the HTTP face, ahead of its own (health, metrics, the page, STOW-RS)."""

    def __init__(self, config: Config, poll_seconds: float = 0.2,
                 web_routes: Sequence[BaseRoute] = ()) -> None:
        self.config = config
        self.storage = Storage(Path(config.node.storage))
        self.storage.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.storage.store)
        self.disk = DiskReserve(self.storage.root, int(config.node.disk_reserve_mb * 2**20))
        self.metrics = Metrics()
        self.poll = poll_seconds
        inference = config.inference
        default_model = inference.model if inference else None
        self.models: dict[str, Path | None] = {
            site.name: site.model or default_model for site in config.sites}
        self.models[UNKNOWN_SITE] = default_model
        self.inference_device = inference.device if inference else "auto"
        self.model_problems: dict[str, str] = {}
        self.usable_models: dict[str, Path | None] = {}
        self.ctx: NodeContext | None = None
        self.receive: ReceiveStage | None = None
        self._wake = threading.Event()  # serve_forever: a signal, or a loop that failed
        self._stopping = threading.Event()
        self.web_routes = tuple(web_routes)
        self._http: WebServer | None = None
        self._stages: dict[Loop, Stage] = {}
        self._threads: dict[Loop, threading.Thread] = {}
        self._failures: dict[Loop, LoopFailure] = {}
        self._running = False  # every loop started

    @property
    def workers(self) -> int:
        workers = self.config.node.workers
        return (os.cpu_count() or 1) if workers == "auto" else int(workers)

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Listen (HTTP, then DICOM) and start the loops; NodeError when a port is taken or the
        HTTP face's token or certificate cannot be read."""
        requeued, studies = self.store.requeue_in_flight()
        if requeued or studies:
            log.warning("%d instances and %d studies were handed out when the node last "
                        "stopped: queued again", requeued, studies)
        if any(model is not None for model in self.models.values()):
            self.usable_models, self.model_problems = check_models(self.models)
            for problem in self.model_problems.values():
                log.error("%s; its transcoding and forwarding go on", problem)
        queue = open_queue(self.config, self.workers,
                           lambda kind: self.metrics.count(DEATH_METRICS[kind]))
        self.ctx = ctx = NodeContext(self.config, self.storage, self.store, queue, self.metrics,
                                     self.poll, stopping=self._stopping)
        node = self.config.node
        if node.http_port:
            try:
                self._http = self._serve_http(ctx)
            except NodeError:
                queue.close()
                raise
        self.receive = ReceiveStage(ctx, self.disk, self._skipped)
        try:
            self.receive.start()
        except OSError as exc:
            if self._http is not None:
                self._http.stop()
            queue.close()
            raise NodeError(f"cannot listen for DICOM on {node.host}:{node.port} (node.port): "
                            f"{exc.strerror or exc}") from exc
        self._stages = {Loop.TRANSCODE: TranscodeStage(ctx), Loop.FORWARD: ForwardStage(ctx)}
        if any(model is not None for model in self.usable_models.values()):
            self._stages[Loop.INFER] = InferenceStage(ctx, self.usable_models,
                                                      self.model_problems, self.inference_device)
        if node.retention_days is not None:
            self._stages[Loop.RETENTION] = RetentionStage(ctx, node.retention_days)
        for loop, stage in self._stages.items():
            thread = threading.Thread(target=self._run_loop, args=(loop, stage),
                                      name=f"{loop.value}-loop", daemon=True)
            thread.start()
            self._threads[loop] = thread
        self._running = True
        log.info("listening on %s:%d as %s (work queue: %s)", node.host, node.port,
                 node.ae_title, type(queue).__name__)

    def _serve_http(self, ctx: NodeContext) -> WebServer:
        """The HTTP face on node.http_host:http_port, serving; NodeError naming the key when a
        token cannot be read, the certificate cannot be loaded or the port is taken."""
        node = self.config.node
        try:
            credentials = Credentials.load(self.config)
        except TokenError as exc:
            raise NodeError(str(exc)) from exc
        tls = None
        if node.http_tls and node.tls is not None:
            try:
                tls = https_context(node.tls)
            except (OSError, ssl.SSLError) as exc:
                raise NodeError(f"cannot load the node's certificate for HTTPS (node.tls): "
                                f"{exc}") from exc
        web = WebContext(ctx, self.disk, credentials, self.health, self._gauges, self._skipped)
        server = WebServer(create_app(web, self.web_routes), node.http_host, node.http_port, tls,
                           grace=node.network_timeout)
        try:
            server.start()
        except OSError as exc:
            raise NodeError(f"cannot listen for HTTP on {node.http_host}:{node.http_port} "
                            f"(node.http_port): {exc.strerror or exc}") from exc
        log.info("HTTP on %s://%s:%d (%s)", server.scheme, node.http_host, server.port,
                 "token required" if credentials.token_required else "no token configured")
        return server

    def _skipped(self, site: str) -> str | None:
        """Why a site's studies have no inference to wait for (no usable model), or None."""
        if self.usable_models.get(site) is not None:
            return None
        return self.model_problems.get(site, f"site {site} has no model")

    def _run_loop(self, loop: Loop, stage: Stage) -> None:
        """Run one stage until the node stops (and what it handed out came back); a loop that
        ends before shutdown is recorded and wakes serve_forever."""
        ctx = self.ctx
        assert ctx is not None
        try:
            while not ctx.stop.is_set() or stage.busy():
                try:
                    stage.step(accepting=not ctx.stop.is_set())
                except OSError as exc:  # the job store's StoreFull among them
                    if not ctx.wait_for_space(exc):
                        raise
        except BaseException as exc:
            failure = LoopFailure(loop, f"{type(exc).__name__}: {exc}")
            log.exception("%s", failure)
        else:
            return
        self._failures[loop] = failure
        self._wake.set()

    @property
    def failures(self) -> list[LoopFailure]:
        """The loops that ended on their own, with why."""
        return list(self._failures.values())

    def stop(self) -> None:
        """Stop accepting, let running associations and jobs finish, then close. /healthz keeps
        answering (503, stopping or failed) until the end."""
        self._stopping.set()
        if self.receive is not None:
            self.receive.stop()
        if self.ctx is not None:
            self.ctx.stop_all()
        for thread in self._threads.values():
            thread.join()
        if self.ctx is not None:
            self.ctx.queue.close()
        if self._http is not None:  # the last: /healthz answers while the rest drains, and
            self._http.stop()  # STOW-RS requests in flight finish before the job store closes
        self.store.close()

    def serve_forever(self) -> int:
        """Run until SIGTERM or SIGINT, then drain and return the exit status: 0, or
        EXIT_LOOP_FAILED when a loop ended on its own (drained as well), so that systemd or
        compose restarts the node and the job store resumes the work."""
        def stopping(*_: object) -> None:  # at once: workers signalled with the node
            self._stopping.set()  # (its process group) must not count as deaths
            self._wake.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stopping)
        self.start()
        # A timed wait: the handler runs in this same thread, and a signal that lands inside
        # Event.wait between its check of the flag and its sleep would otherwise be lost.
        while not self._wake.wait(0.5):
            pass
        failures = self.failures
        if failures:
            log.error("stopping: %s; exiting with status %d for a restart",
                      "; ".join(map(str, failures)), EXIT_LOOP_FAILED)
        else:
            log.info("stopping: draining associations and jobs")
        self.stop()
        return EXIT_LOOP_FAILED if failures else 0

    # -- what it reports -------------------------------------------------------------------
    def _disk_low(self, space: DiskSpace) -> bool:
        return space.low or (self.ctx is not None and self.ctx.recent_disk_full() is not None)

    def health(self) -> dict:
        """What /healthz reports: "ok" while every loop runs and the disk has room; otherwise the
        status says what is wrong and the warnings name it (inference and broker trouble only
        warn: images are still received and kept)."""
        warnings = [str(failure) for failure in self.failures]
        try:
            counts, studies = self.store.counts(), self.store.study_states()
            store_ok = True
        except StoreError as exc:
            counts, studies, store_ok = {}, {}, False
            warnings.append(str(exc))
        space = self.disk.space()
        if space.low:
            warnings.append(f"low disk in {self.storage.root}: {space}: new instances are "
                            "answered Out of Resources (0xA700)")
        full = self.ctx.recent_disk_full() if self.ctx else None
        if full is not None:
            when, error = full
            warnings.append(f"disk full {time.time() - when:.0f} s ago ({error}): what met it is "
                            "tried again")
        warnings += sorted(set(self.model_problems.values()))
        if self.ctx is not None:
            warnings += self.ctx.queue.warnings()
        forward = self._stages.get(Loop.FORWARD)
        if isinstance(forward, ForwardStage) and store_ok:
            warnings += forward.warnings()
        if self.failures or not store_ok:
            status = NodeStatus.FAILED
        elif self._stopping.is_set():
            status = NodeStatus.STOPPING
        elif not self._running:
            status = NodeStatus.STARTING
        elif self._disk_low(space):
            status = NodeStatus.LOW_DISK
        else:
            status = NodeStatus.OK
        return {
            "status": status.value,
            "ae_title": self.config.node.ae_title,
            "uptime_seconds": round(time.time() - self.metrics.started, 1),
            "queue_depth": queue_depth(counts) if store_ok else None,
            "studies": studies,
            "loops": {loop.value: "running" if thread.is_alive() else
                      str(self._failures.get(loop, "stopped")) for loop, thread in
                      self._threads.items()},
            "disk": {"free_mb": round(space.free_bytes / 2**20, 1),
                     "reserve_mb": round(space.reserve_bytes / 2**20, 1),
                     "low": self._disk_low(space)},
            "warnings": warnings,
        }

    def _gauges(self) -> list[Gauge]:
        """The node's state for /metrics: disk space against the reserve, the loops running,
        the largest a transcoding worker has been."""
        space = self.disk.space()
        gauges = [
            Gauge("disk_free_bytes", "Free space in the storage folder.", space.free_bytes),
            Gauge("disk_reserve_bytes", "Free space the node keeps (node.disk_reserve_mb).",
                  space.reserve_bytes),
            Gauge("disk_low", "1 while the disk is below the reserve or was full in the last "
                  f"{DISK_FULL_SHOWN_SECONDS:g} s.", int(self._disk_low(space))),
        ]
        transcode = self._stages.get(Loop.TRANSCODE)
        if isinstance(transcode, TranscodeStage):
            gauges.append(Gauge("transcode_worker_peak_rss_bytes",
                                "The largest resident memory a transcoding worker reported.",
                                int(transcode.peak_rss_mb * 2**20)))
        forward = self._stages.get(Loop.FORWARD)
        if isinstance(forward, ForwardStage):
            gauges += [Gauge("destination_up", "0 while the last tries to deliver there failed.",
                             int(health.failing_since is None), {"destination": name})
                       for name, health in forward.health.items()]
        gauges += [Gauge("loop_up", "1 while the loop runs.", int(thread.is_alive()),
                         {"loop": loop.value}) for loop, thread in self._threads.items()]
        return gauges
