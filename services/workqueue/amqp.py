"""The scale-out backend (`queue: amqp://user:password@host:port/vhost`): Celery on RabbitMQ.

The node publishes each task to a durable quorum queue (`dicomcr.transcode`, `dicomcr.infer`)
with a publisher confirm: `submit` returns only once RabbitMQ has the message, and raises
QueueUnavailable when it cannot, so the job store's row stays the outbox and is published again
later. `dicomcr worker` processes on any machine that mounts the node's storage take tasks one at
a time (prefetch 1) and acknowledge each only when it is done (late acks); a worker that dies
with a task has it redelivered (reject on worker lost). After the queue's delivery limit RabbitMQ
moves the task to the dead-letter queue `dicomcr.dead`, which the node reads and records as a
failed job with its reason.

A worker leaves each task's result as JSON in `<storage>/results/<task id>.json` (written then
renamed, flushed to disk) and the node reads it there: results live on the shared storage, not in
the broker, and a task run twice (redelivered, or published again after the node restarted)
writes the same outputs and the same result. A result file that cannot be read (corrupt, or from
a worker of another version) fails its task with the reason, and is kept as `<task id>.unreadable`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from dicomcr.jobs import Storage
from dicomcr.outputs import write_text_atomically

from .base import (
    InferenceResult,
    InferenceTask,
    Outcome,
    QueueLine,
    QueueUnavailable,
    QueueView,
    Result,
    Task,
    TaskKind,
    TranscodeResult,
    TranscodeTask,
    run_inference,
    run_transcode,
)

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("dicomcr.queue")

QUEUES = {TaskKind.TRANSCODE: "dicomcr.transcode", TaskKind.INFER: "dicomcr.infer"}
TASK_NAMES = {TaskKind.TRANSCODE: "dicomcr.transcode", TaskKind.INFER: "dicomcr.infer"}
EXCHANGE = "dicomcr"
DEAD_LETTER_EXCHANGE = "dicomcr.dead"
DEAD_LETTER_QUEUE = "dicomcr.dead"
PUBLISH_TIMEOUT_SECONDS = 10.0  # a broker that does not confirm by then is treated as down
# The node's own connections fail at once when the broker refuses them (kombu's default retries
# for 12 s, blocking the stage that asked); the stages try again at their own pace.
NO_RETRY = {"max_retries": 0}
DEAD_LETTER_CHECK_SECONDS = 1.0
IN_FLIGHT_LIMIT = 512  # tasks of one kind published and not yet finished, before the node waits


def delivery_limit(max_worker_deaths: int) -> int:
    """RabbitMQ's x-delivery-limit for a task given up after `max_worker_deaths` deaths: a
    quorum queue dead-letters a message once it was returned more than `limit` times."""
    return max(max_worker_deaths - 1, 0)


def _queues(delivery_limit: int) -> list:
    """The task queues, declared alike by the node and every worker: quorum queues (replicated,
    durable) whose deliveries are counted; past the limit a message is dead-lettered."""
    from kombu import Exchange, Queue

    exchange = Exchange(EXCHANGE, type="topic", durable=True)  # topic: Celery's delayed delivery binds it
    return [Queue(QUEUES[kind], exchange, routing_key=QUEUES[kind], durable=True,
                  queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": delivery_limit,
                                   "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                                   "x-dead-letter-routing-key": QUEUES[kind]})
            for kind in TaskKind]


def _dead_letter_queue():
    from kombu import Exchange, Queue

    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)
    return Queue(DEAD_LETTER_QUEUE, exchange, routing_key=QUEUES[TaskKind.TRANSCODE],
                 durable=True, queue_arguments={"x-queue-type": "quorum"})


def celery_app(url: str, delivery_limit: int) -> Celery:
    """The Celery application of the node and its workers, with the task functions registered.

    Settings, and why: late acks and reject-on-worker-lost (a task is acknowledged only once
    done, and a worker's death gives it back); prefetch 1 (a worker holds one task per process,
    so a long encode does not keep others waiting behind it); publisher confirms; JSON only
    (a message never executes code when read); no result backend (results go to storage)."""
    from celery import Celery

    app = Celery("dicomcr", broker=url, set_as_current=False)
    app.conf.update(
        task_queues=_queues(delivery_limit),
        task_routes={TASK_NAMES[kind]: {"queue": QUEUES[kind], "routing_key": QUEUES[kind]}
                     for kind in TaskKind},
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )

    @app.task(name=TASK_NAMES[TaskKind.TRANSCODE])
    def transcode(task: dict, result: str) -> None:
        _leave_result(Path(result), [run_transcode(TranscodeTask.from_dict(task))])

    @app.task(name=TASK_NAMES[TaskKind.INFER])
    def infer(task: dict, result: str) -> None:
        _leave_result(Path(result), run_inference(InferenceTask.from_dict(task)))

    return app


def _leave_result(path: Path, results: list[Result]) -> None:
    """Flush the task's outputs to the disk, then leave its result: on shared storage the node
    must never see a result before the files it names."""
    for result in results:
        outputs = result.outputs if isinstance(result, TranscodeResult) else \
            tuple(o.path for o in result.objects)
        for output in outputs:
            with open(output, "rb") as handle:
                os.fsync(handle.fileno())
    write_text_atomically(path, json.dumps([r.to_dict() for r in results]), durable=True)


class UnreadableResult(ValueError):
    """A result file that is there but holds no results of its kind: corrupt, or left by a
    worker of another version (never half written: workers write it whole, then rename it)."""


def _read_result(kind: TaskKind, path: Path) -> list[Result] | None:
    """The results a worker left at `path`, or None while there are none; UnreadableResult when
    the file cannot be read as results."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    parse = TranscodeResult.from_dict if kind is TaskKind.TRANSCODE else InferenceResult.from_dict
    try:
        return [parse(item) for item in json.loads(text)]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableResult(f"{type(exc).__name__}: {exc}") from exc


def _given_up(kind: TaskKind, task: dict, outcome: Outcome, reason: str) -> list[Result]:
    """A task the node will not get results for (dead-lettered, or its result unreadable), as
    results with `outcome` and `reason` for each of its keys (`task` as `Task.to_dict` gives)."""
    if kind is TaskKind.TRANSCODE:
        return [TranscodeResult(task["sop_instance_uid"], outcome, error=reason)]
    return [InferenceResult(s["study_uid"], outcome, error=reason)
            for s in task.get("studies", [])]


class AmqpQueue:
    """WorkQueue over Celery on RabbitMQ; see the module's docstring."""

    waits_on_stop = False  # tasks on the broker outlive the node; a restart publishes them again
    announces = False  # results are files on shared storage: the node looks for them

    def __init__(self, url: str, storage: Path, delivery_limit: int) -> None:
        """`storage`: the node's storage folder, shared with the workers."""
        self.url = url
        self.storage = Storage(storage)
        self.results_folder = self.storage.results
        self.results_folder.mkdir(parents=True, exist_ok=True)
        self.app = celery_app(url, delivery_limit)
        self._lock = threading.Lock()
        # {kind: {task id: (its result file, the task)}}: what was published and has not come back
        self._published: dict[TaskKind, dict[str, tuple[Path, Task]]] = {k: {} for k in TaskKind}
        self._dead: dict[TaskKind, list[Result]] = {k: [] for k in TaskKind}
        # The reading connection (kombu), for the dead-letter queue and the queues' depths, so
        # that publishing never waits on a read: opened once, and again after a failure. Its
        # lock also guards `_dead` and the next dead-letter check.
        self._reader_lock = threading.Lock()
        self._reader = None
        self._next_dead_check = 0.0
        self._broker_error: tuple[float, str] | None = None
        self._publisher: tuple | None = None  # (connection, producer)
        self._publish_lock = threading.Lock()
        for stale in self.results_folder.glob("*.json"):  # tasks of an earlier run of the node:
            stale.unlink(missing_ok=True)  # its jobs were queued again when it started

    # -- publishing -------------------------------------------------------------------------
    def _producer(self):
        """The node's one publishing connection (publisher confirms on), opened on first use
        and after a failure, with the queues declared (idempotent)."""
        if self._publisher is None:
            from kombu import Connection

            connection = Connection(self.url, connect_timeout=PUBLISH_TIMEOUT_SECONDS,
                                    transport_options={"confirm_publish": True, **NO_RETRY})
            try:
                channel = connection.default_channel
                for queue in self.app.conf.task_queues:
                    queue(channel).declare()
                dead = _dead_letter_queue()(channel)
                dead.declare()
                for kind in TaskKind:
                    dead.bind_to(DEAD_LETTER_EXCHANGE, routing_key=QUEUES[kind])
            except Exception:
                connection.close()
                raise
            self._publisher = (connection, self.app.amqp.Producer(channel))
        return self._publisher[1]

    def _drop_publisher(self) -> None:
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                self._publisher[0].close()
            self._publisher = None

    def capacity(self, kind: TaskKind) -> int:
        with self._lock:
            return IN_FLIGHT_LIMIT - len(self._published[kind])

    def submit(self, task: Task) -> None:
        task_id = str(uuid.uuid4())
        result = self.storage.result_of(task_id)
        with self._publish_lock:
            try:
                self.app.send_task(TASK_NAMES[task.kind], args=(task.to_dict(), str(result)),
                                   task_id=task_id, producer=self._producer(), retry=False,
                                   queue=QUEUES[task.kind], routing_key=QUEUES[task.kind],
                                   timeout=PUBLISH_TIMEOUT_SECONDS)
            except Exception as exc:  # kombu's OperationalError, socket errors, no confirm
                self._drop_publisher()
                self._broker_failed(exc)
                raise QueueUnavailable(f"RabbitMQ at {self._safe_url()} did not take the "
                                       f"task: {exc}") from exc
        self._broker_error = None
        with self._lock:
            self._published[task.kind][task_id] = (result, task)

    # -- results ----------------------------------------------------------------------------
    def results(self, kind: TaskKind, timeout: float) -> list[Result]:
        deadline = time.monotonic() + timeout
        while True:
            found = self._collect(kind) + self._dead_lettered(kind)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _collect(self, kind: TaskKind) -> list[Result]:
        with self._lock:
            published = list(self._published[kind].items())
        found: list[Result] = []
        for task_id, (path, task) in published:
            try:
                results = _read_result(kind, path)
            except UnreadableResult as exc:
                kept = path.with_suffix(".unreadable")
                path.replace(kept)  # kept for whoever looks into it; the node fails the task
                reason = (f"the worker's result could not be read ({exc}); kept as {kept}; "
                          f"`dicomcr retry` runs it again")
                log.error("%s task %s: %s", kind.value, task_id, reason)
                results = _given_up(kind, task.to_dict(), Outcome.FAILED, reason)
            if results is None:
                continue
            with self._lock:
                self._published[kind].pop(task_id, None)
            path.unlink(missing_ok=True)
            found += results
        return found

    def _dead_lettered(self, kind: TaskKind) -> list[Result]:
        """Tasks RabbitMQ gave up on, as results saying so. The dead-letter queue is read at most
        once a second, by whichever stage asks first (a connection is not shared between
        threads); what belongs to the other kind waits for it in `_dead`."""
        with self._reader_lock:
            if time.monotonic() >= self._next_dead_check:
                self._next_dead_check = time.monotonic() + DEAD_LETTER_CHECK_SECONDS
                self._drain_dead_letters()
            found, self._dead[kind] = self._dead[kind], []
        return found

    def _drain_dead_letters(self) -> None:
        """Read the dead-letter queue on the reading connection (under `_reader_lock`)."""
        from kombu import Queue

        if self._publisher is None:  # nothing published yet (or the broker is down)
            return
        try:
            queue = Queue(DEAD_LETTER_QUEUE, channel=self._reading_channel(), no_declare=True)
            while (message := queue.get(no_ack=False, accept=["json"])) is not None:
                self._record_dead(message.headers or {}, message.payload)
                message.ack()
            if self._publisher is not None:  # the broker answers again
                self._broker_error = None
        except Exception as exc:  # the broker is down: said in warnings, read again later
            self._drop_reader()
            self._broker_failed(exc)

    def _reading_channel(self):
        """The reading connection's channel, connecting first when it is not open; the caller
        holds `_reader_lock` and calls `_drop_reader` when a read fails."""
        from kombu import Connection

        if self._reader is None:
            self._reader = Connection(self.url, connect_timeout=PUBLISH_TIMEOUT_SECONDS,
                                      transport_options=NO_RETRY)
        return self._reader.default_channel

    def _drop_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.close()
            self._reader = None

    def _record_dead(self, headers: dict, payload: object) -> None:
        """One dead-lettered task message (Celery's protocol 2: headers name the task and its
        id, the body is (args, kwargs, embed)) as results for its keys."""
        kinds = {name: kind for kind, name in TASK_NAMES.items()}
        kind = kinds.get(headers.get("task", ""))
        args = payload[0] if isinstance(payload, list | tuple) and payload else []
        data = args[0] if args and isinstance(args[0], dict) else None
        if kind is None or data is None:
            log.error("dead-letter queue: a message that is no dicomcr task was dropped: %s",
                      headers)
            return
        deliveries = headers.get("x-delivery-count")
        reason = (f"RabbitMQ gave the task up after its delivery limit ({deliveries or 'several'}"
                  " deliveries): the worker running it died or was lost each time")
        task_id = headers.get("id", "")
        with self._lock:
            self._published[kind].pop(task_id, None)
        log.error("dead-lettered %s task %s: %s", kind.value, task_id, reason)
        self._dead[kind] += _given_up(kind, data, Outcome.DEAD_LETTERED, reason)

    def _broker_failed(self, exc: BaseException) -> None:
        """Remember a failure to reach the broker: since when (the first failure of this
        outage, not the last reconnect) and the last error."""
        since = self._broker_error[0] if self._broker_error else time.time()
        self._broker_error = (since, f"{type(exc).__name__}: {exc}")

    def watch(self, kind: TaskKind, callback) -> None:
        """Nothing: results are found by looking (see `announces`)."""

    def describe(self) -> QueueView:
        """Each task queue's depth and consumers (the `dicomcr worker` processes taking it), as
        RabbitMQ reports them to a passive declare; unknown while the broker is unreachable."""
        with self._lock:
            running = {kind: len(self._published[kind]) for kind in TaskKind}
        counts: dict[TaskKind, tuple[int | None, int | None]] = {}
        if self._publisher is None:  # the queues are declared with the publishing connection
            with self._publish_lock:
                try:
                    self._producer()
                except Exception as exc:
                    self._drop_publisher()
                    self._broker_failed(exc)
        with self._reader_lock:  # publishing never waits on a page
            try:
                channel = self._reading_channel()
                for kind in TaskKind:
                    _, waiting, consumers = channel.queue_declare(QUEUES[kind], passive=True)
                    counts[kind] = (waiting, consumers)
            except Exception as exc:  # the broker is down (or the queues not declared yet)
                self._drop_reader()
                self._broker_failed(exc)
        lines = tuple(QueueLine(kind, running[kind], *counts.get(kind, (None, None)))
                      for kind in TaskKind)
        return QueueView(f"RabbitMQ at {self._safe_url()}", lines)

    def warnings(self) -> list[str]:
        error = self._broker_error
        if error is None:
            return []
        when, what = error
        return [f"RabbitMQ at {self._safe_url()} unreachable for {time.time() - when:.0f} s "
                f"({what}): received images wait in the spool and are published when it returns"]

    def _safe_url(self) -> str:
        """The broker's URL without its password, for logs and /healthz."""
        from kombu.utils.url import maybe_sanitize_url

        return maybe_sanitize_url(self.url)

    def close(self) -> None:
        with self._publish_lock:
            self._drop_publisher()
        with self._reader_lock:
            self._drop_reader()
        self.app.close()
