"""Where the node's transcoding and inference run: one interface (WorkQueue), two backends.

    queue: local                               process pools on this machine (the default)
    queue: amqp://user:password@host:port/vhost  Celery workers on RabbitMQ (`dicomcr worker`)
"""

from __future__ import annotations

from collections.abc import Callable

from dicomcr.config import Config

from .base import (
    DerivedObject,
    InferenceResult,
    InferenceTask,
    Outcome,
    QueueLine,
    QueueUnavailable,
    QueueView,
    Result,
    StudyTask,
    Task,
    TaskKind,
    TranscodeResult,
    TranscodeTask,
    WorkQueue,
)

__all__ = [
    "DerivedObject", "InferenceResult", "InferenceTask", "Outcome", "QueueLine",
    "QueueUnavailable", "QueueView", "Result", "StudyTask", "Task", "TaskKind", "TranscodeResult",
    "TranscodeTask", "WorkQueue", "open_queue",
]


def open_queue(config: Config, workers: int,
               on_death: Callable[[TaskKind], None] = lambda kind: None) -> WorkQueue:
    """The backend `node.queue` names: local pools of `workers` processes, or RabbitMQ."""
    url = config.node.queue
    if url == "local":
        from .local import LocalQueue

        return LocalQueue(workers, on_death)
    from .amqp import AmqpQueue, delivery_limit

    return AmqpQueue(url, config.node.storage, delivery_limit(config.node.max_worker_deaths))
