"""`dicomcr worker`: a Celery worker that takes the node's tasks from RabbitMQ.

It runs on any machine that mounts the node's storage at the same path (tasks carry paths, never
pixel data) and reaches the broker named by `node.queue` in the same node.yaml. `--queues infer`
makes a GPU machine take only inference; `--queues transcode` a CPU machine only transcoding.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from dicomcr.config import Config

from .workqueue import TaskKind
from .workqueue.amqp import QUEUES, celery_app, delivery_limit


class WorkerError(ValueError):
    """A worker that cannot start (no broker configured); the message says what to change."""


def worker_argv(kinds: Sequence[TaskKind], concurrency: int, name: str | None = None
                ) -> list[str]:
    """Celery's worker arguments: the queues, one process per task (prefork: a task that
    crashes its process loses only itself), no gossip, mingle or broker heartbeats between
    workers (the node needs none of them)."""
    label = "-".join(kind.value for kind in kinds)
    return ["worker", "--queues", ",".join(QUEUES[kind] for kind in kinds),
            "--concurrency", str(concurrency), "--pool", "prefork",
            "--hostname", name or f"dicomcr-{label}-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO"]


def run_worker(config: Config, kinds: Sequence[TaskKind], concurrency: int | None = None) -> None:
    """Run a worker until SIGTERM (Celery's warm shutdown: running tasks finish)."""
    url = config.node.queue
    if url == "local":
        raise WorkerError("node.queue is 'local' in this configuration: workers take tasks "
                          "from RabbitMQ; set node.queue to amqp://user:password@host:port/vhost")
    if concurrency is None:
        concurrency = 1 if list(kinds) == [TaskKind.INFER] else (os.cpu_count() or 1)
    app = celery_app(url, delivery_limit(config.node.max_worker_deaths))
    app.worker_main(worker_argv(kinds, concurrency))
