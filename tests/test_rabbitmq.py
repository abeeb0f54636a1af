"""The RabbitMQ peer, and the queue semantics the node's amqp work queue relies on, on the real
broker (Debian's rabbitmq-server 3.10.8 here): quorum queues with a delivery limit and a
dead-letter queue, durability across a SIGKILL of the broker, publisher confirms.

Observed with 3.10.8 (the docstrings say where):
- a message in a quorum queue with `x-delivery-limit: 2` is delivered 3 times and dead-lettered
  when it is returned a third time, whether it was rejected with requeue or its consumer's
  connection closed without an ack (a SIGKILLed worker). Its `x-delivery-count` header says 0, 1,
  2 to basic.get; a consumer (basic.consume, as Celery) gets no such header the first time, then
  1 and 2; `redelivered` is true from the second delivery on;
- the dead-lettered message keeps its body and headers and gains `x-death` (a list; its first
  entry has reason "delivery_limit", the queue, the exchange, the routing keys and a count) and
  `x-first-death-reason` ("delivery_limit"), `x-first-death-queue`, `x-first-death-exchange`;
- a publish while the broker is down raises: kombu's OperationalError on a new connection, an
  OSError (ConnectionResetError first) on one opened before; both are in the connection's
  `recoverable_connection_errors` or kombu's OperationalError, as is amqp's MessageNacked.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError
from peers import RabbitMQ

pytestmark = pytest.mark.peers

DELIVERY_LIMIT = 2
# In 3.10.8 a quorum queue whose broker is SIGKILLed within about a second of the queue's
# declaration comes back without a leader ("leader not known": basic.get times out after 65 s,
# publishes are nacked) and what it held is gone. Seen at 0.6 s, not at 1 s; a queue declared
# earlier keeps every confirmed message. The node declares its queues once, at start.
QUORUM_SETTLE_SECONDS = 3.0


def _queues(name: str, strategy: str | None = None) -> tuple[Queue, Queue]:
    """A work queue as the node's amqp backend declares one, and its dead-letter queue."""
    dead = Queue(f"{name}.dead", Exchange("dicomcr.dead", type="direct", durable=True),
                 routing_key=f"{name}.dead", durable=True,
                 queue_arguments={"x-queue-type": "quorum"})
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT,
                 "x-dead-letter-exchange": "dicomcr.dead",
                 "x-dead-letter-routing-key": f"{name}.dead"}
    if strategy == "at-least-once":  # needs reject-publish; at-most-once is the default
        arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    work = Queue(name, Exchange(name, type="direct", durable=True), routing_key=name,
                 durable=True, queue_arguments=arguments)
    return work, dead


def _declare(broker: RabbitMQ, *queues: Queue) -> None:
    with broker.connection() as conn:
        for queue in queues:
            queue(conn.default_channel).declare()


def _publish(broker: RabbitMQ, queue: Queue, body: dict, **headers) -> None:
    """Publish persistently with publisher confirms: returns once the broker has it."""
    with broker.connection(confirm_publish=True) as conn:
        Producer(conn).publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                               delivery_mode=2, headers=headers, retry=False)


def _get(broker: RabbitMQ, queue: Queue, timeout: float = 10.0):
    """The next message of a queue, acknowledged; None when none came within `timeout`."""
    deadline = time.monotonic() + timeout
    with broker.connection() as conn:
        while time.monotonic() < deadline:
            message = queue(conn.default_channel).get(no_ack=True)
            if message is not None:
                return message
            time.sleep(0.1)
    return None


@pytest.mark.parametrize("strategy", [None, "at-least-once"])
def test_a_rejected_task_is_redelivered_then_dead_lettered_with_its_reason(
        rabbitmq: RabbitMQ, strategy: str | None) -> None:
    """x-delivery-limit 2: three deliveries (x-delivery-count 0, 1, 2, `redelivered` from the
    second on), then the third reject-with-requeue dead-letters it, headers and body kept,
    x-death and x-first-death-reason saying "delivery_limit". Either strategy behaves so."""
    work, dead = _queues(f"reject-{strategy or 'default'}", strategy)
    _declare(rabbitmq, dead, work)
    _publish(rabbitmq, work, {"job": 7}, task="transcode", id="job-7")
    counts = []
    with rabbitmq.connection() as conn:
        for _ in range(DELIVERY_LIMIT + 3):
            message = None
            for _ in range(50):  # a requeued message is back within milliseconds
                message = work(conn.default_channel).get(no_ack=False)
                if message is not None:
                    break
                time.sleep(0.05)
            if message is None:
                break
            assert message.delivery_info["redelivered"] == bool(counts)
            counts.append(message.headers["x-delivery-count"])
            message.reject(requeue=True)
    assert counts == [0, 1, 2]

    died = _get(rabbitmq, dead)
    assert died is not None and died.payload == {"job": 7}
    assert died.headers["task"] == "transcode" and died.headers["id"] == "job-7"
    assert died.headers["x-first-death-reason"] == "delivery_limit"
    assert died.headers["x-first-death-queue"] == work.name
    assert died.headers["x-first-death-exchange"] == work.exchange.name
    (death,) = died.headers["x-death"]
    assert death["reason"] == "delivery_limit" and death["queue"] == work.name
    assert death["count"] == 1 and death["routing-keys"] == [work.routing_key]
    assert rabbitmq.ready(work.name) == 0


CONSUMER = """
import sys, time
from kombu import Connection, Queue
url, name = sys.argv[1:3]
with Connection(url) as conn:
    channel = conn.default_channel
    channel.basic_qos(0, 1, False)  # prefetch 1, manual acks: Celery's late acks
    def got(body, message):
        print("got", message.headers.get("x-delivery-count"),
              message.delivery_info["redelivered"], flush=True)
        time.sleep(3600)  # the task runs; the test SIGKILLs this process meanwhile
    queue = Queue(name, channel=channel, no_declare=True)
    with conn.Consumer(queue, callbacks=[got], accept=["json"]):
        while True:
            conn.drain_events()
"""


def test_a_task_whose_worker_is_sigkilled_is_redelivered_then_dead_lettered(
        rabbitmq: RabbitMQ) -> None:
    """A worker process that dies (SIGKILL) holding an unacknowledged task: its connection
    closes, the task goes back to the queue and counts as a delivery, as a reject does. With
    limit 2 the third worker's death sends it to the dead-letter queue. A consumer (unlike
    basic.get) sees no x-delivery-count on the first delivery, then 1 and 2."""
    work, dead = _queues("killed")
    _declare(rabbitmq, dead, work)
    _publish(rabbitmq, work, {"job": 9})
    seen = []
    for _ in range(DELIVERY_LIMIT + 1):
        worker = subprocess.Popen([sys.executable, "-c", CONSUMER, rabbitmq.url, work.name],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            seen.append(_line_within(worker, 30.0))
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    assert seen == ["got None False", "got 1 True", "got 2 True"]
    died = _get(rabbitmq, dead)
    assert died is not None and died.payload == {"job": 9}
    assert died.headers["x-first-death-reason"] == "delivery_limit"
    assert rabbitmq.ready(work.name) == 0


def _line_within(process: subprocess.Popen, seconds: float) -> str:
    """The process's first line of output, within `seconds`."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(seconds):
            pytest.fail(f"the consumer got no task within {seconds} s")
    line = process.stdout.readline().strip()
    assert line.startswith("got"), line + process.stdout.read()
    return line


def test_a_confirmed_message_survives_a_sigkill_of_the_broker(rabbitmq: RabbitMQ) -> None:
    """Publisher confirms mean on disk: SIGKILL the broker right after the confirm, start it on
    the same data folder and ports, and the message is there with its headers."""
    work, dead = _queues("survives")
    _declare(rabbitmq, dead, work)
    time.sleep(QUORUM_SETTLE_SECONDS)
    url, pid = rabbitmq.url, rabbitmq.pid
    _publish(rabbitmq, work, {"job": 1}, id="job-1")
    rabbitmq.kill()
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    with pytest.raises(OperationalError), Connection(url, connect_timeout=1) as conn:
        conn.ensure_connection(max_retries=1)
    rabbitmq.start()
    assert rabbitmq.url == url and rabbitmq.pid != pid
    message = _get(rabbitmq, work, timeout=30.0)
    assert message is not None and message.payload == {"job": 1}
    assert message.headers["id"] == "job-1"
    assert _get(rabbitmq, work, timeout=0.5) is None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_publishing_while_the_broker_is_down_raises_and_nothing_is_half_sent(
        rabbitmq: RabbitMQ) -> None:
    """With confirm_publish a publish that the broker did not confirm raises, so the caller
    keeps its row unsent: kombu's OperationalError on a new connection (after its connect
    retries: max_retries, else connect_timeout), OSError (first ConnectionResetError) on one
    opened before the broker went. Both are what kombu calls recoverable; after the broker is
    back a publish with retry=True reconnects and is confirmed. The queue holds exactly the
    confirmed messages."""
    work, dead = _queues("confirms")
    _declare(rabbitmq, dead, work)
    time.sleep(QUORUM_SETTLE_SECONDS)
    _publish(rabbitmq, work, {"n": 1})
    opened = Connection(rabbitmq.url, connect_timeout=2,
                        transport_options={"confirm_publish": True, "max_retries": 1})
    producer = Producer(opened)
    producer.publish({"n": 2}, exchange=work.exchange, routing_key=work.routing_key,
                     delivery_mode=2)
    try:
        with rabbitmq.down():  # a clean stop: the broker closes its connections
            with pytest.raises(OperationalError) as fresh, \
                    rabbitmq.connection(confirm_publish=True, max_retries=1) as conn:
                Producer(conn).publish({"n": 3}, exchange=work.exchange,
                                       routing_key=work.routing_key, delivery_mode=2)
            assert "Connection refused" in str(fresh.value)
            with pytest.raises(OSError) as stale:
                producer.publish({"n": 4}, exchange=work.exchange, routing_key=work.routing_key,
                                 delivery_mode=2)
            assert isinstance(stale.value, opened.recoverable_connection_errors)
        producer.publish({"n": 5}, exchange=work.exchange, routing_key=work.routing_key,
                         delivery_mode=2, retry=True)
    finally:
        opened.release()
    got = [_get(rabbitmq, work) for _ in range(3)]
    assert [m.payload["n"] for m in got if m is not None] == [1, 2, 5]
    assert _get(rabbitmq, work, timeout=0.5) is None


def test_a_pause_takes_the_broker_down_and_brings_it_back(rabbitmq: RabbitMQ) -> None:
    """pause(seconds): down now, back after `seconds` in the background; join() waits."""
    work, dead = _queues("paused")
    _declare(rabbitmq, dead, work)
    time.sleep(QUORUM_SETTLE_SECONDS)
    _publish(rabbitmq, work, {"n": 1})
    began = time.monotonic()
    restart = rabbitmq.pause(2.0)
    assert not rabbitmq.running
    with pytest.raises(OperationalError), rabbitmq.connection(max_retries=1) as conn:
        conn.ensure_connection(max_retries=1)
    restart.join(timeout=120)
    assert rabbitmq.running and time.monotonic() - began >= 2.0
    message = _get(rabbitmq, work, timeout=30.0)
    assert message is not None and message.payload == {"n": 1}


def _listening(port: int) -> set[str]:
    """The local addresses listening on a TCP port, from /proc/net/tcp and tcp6 (hex)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(address)
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1, as /proc has


def test_the_broker_is_its_own_on_loopback(rabbitmq: RabbitMQ, rabbitmq_factory) -> None:
    """Its configuration is applied (consumer timeout, no plugins), AMQP, distribution and its
    epmd listen on loopback only, add_vhost makes a vhost of its own, a second broker runs
    beside it, and close() leaves nothing: no broker process, no epmd on its port."""
    assert rabbitmq.url == f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}//"
    assert rabbitmq.ctl("eval", "application:get_env(rabbit, consumer_timeout).").strip() \
        == "{ok,1800000}"
    assert rabbitmq.ctl("eval", "rabbit_plugins:active().").strip() == "[]"
    for port in (rabbitmq.port, rabbitmq.dist_port, rabbitmq.epmd_port):
        assert _listening(port) and _listening(port) <= LOOPBACK, port
    assert rabbitmq.epmd_port != 4369
    isolated = rabbitmq.add_vhost("isolated")  # a test's own vhost: its own queues
    with Connection(isolated) as conn:
        Queue("only-here", durable=True)(conn.default_channel).declare()
    assert rabbitmq.ready("only-here", isolated) == 0 and rabbitmq.ready("only-here") is None

    other = rabbitmq_factory("other", consumer_timeout_ms=60_000)
    assert {other.port, other.dist_port, other.epmd_port}.isdisjoint(
        {rabbitmq.port, rabbitmq.dist_port, rabbitmq.epmd_port})
    assert other.ctl("eval", "application:get_env(rabbit, consumer_timeout).").strip() \
        == "{ok,60000}"
    pid, epmd_port = other.pid, other.epmd_port
    other.close()
    assert _zombie(pid)
    assert not _listening(epmd_port) and not _listening(other.port)
    assert rabbitmq.ready("nothing-here") is None  # the first broker is untouched


def test_an_unreadable_result_fails_its_task_with_the_reason(rabbitmq: RabbitMQ,
                                                            tmp_path: Path) -> None:
    """The node's amqp queue on the real broker: a task's result file that is there but cannot
    be read (corrupt, or a worker of another version wrote it) is not waited on for ever: the
    task comes back failed, saying why, and the file is kept for whoever looks into it."""
    from dicomcr.config import Policy
    from services.workqueue.amqp import AmqpQueue
    from services.workqueue.base import Outcome, TaskKind, TranscodeTask

    queue = AmqpQueue(rabbitmq.url, tmp_path, DELIVERY_LIMIT)
    try:
        for uid, garbage in (("1.2.3.1", "{not json"), ("1.2.3.2", '[{"sop": "1.2.3.2"}]')):
            queue.submit(TranscodeTask(uid, tmp_path / "in.dcm", tmp_path / "out",
                                       Policy.parse("20")))
            assert queue.results(TaskKind.TRANSCODE, timeout=0.3) == []  # no worker: waiting
            with rabbitmq.connection() as conn:  # take the task as a worker would
                message = Queue("dicomcr.transcode", channel=conn.default_channel,
                                no_declare=True).get(no_ack=False, accept=["json"])
                (task, result_path), _, _ = message.payload
                message.ack()
            assert task["sop_instance_uid"] == uid
            written = Path(result_path)
            written.write_text(garbage)  # as a worker would leave it: whole
            (result,) = queue.results(TaskKind.TRANSCODE, timeout=5)
            assert (result.sop_instance_uid, result.outcome) == (uid, Outcome.FAILED)
            kept = written.with_suffix(".unreadable")
            assert "result could not be read" in result.error and str(kept) in result.error
            assert kept.read_text() == garbage and not written.exists()
        assert queue.capacity(TaskKind.TRANSCODE) == queue.capacity(TaskKind.INFER)  # none left
    finally:
        queue.close()


def test_an_unreachable_broker_is_counted_from_its_first_failure(tmp_path: Path) -> None:
    """/healthz says how long RabbitMQ has been unreachable: from the first failed publish of the
    outage, not from the last failed reconnect (it used to restart at every try)."""
    import re

    from peers import free_port

    from dicomcr.config import Policy
    from services.workqueue import QueueUnavailable, TranscodeTask
    from services.workqueue.amqp import AmqpQueue

    queue = AmqpQueue(f"amqp://guest:guest@127.0.0.1:{free_port()}//", tmp_path, 2)
    task = TranscodeTask("1.2.3", tmp_path / "x.dcm", tmp_path / "out", Policy.parse("20"))
    try:
        with pytest.raises(QueueUnavailable):
            queue.submit(task)
        time.sleep(2.5)
        with pytest.raises(QueueUnavailable):
            queue.submit(task)
        (warning,) = queue.warnings()
        assert int(re.search(r"unreachable for (\d+) s", warning).group(1)) >= 2, warning
    finally:
        queue.close()


def test_the_queue_says_what_waits_and_who_takes_it(rabbitmq: RabbitMQ, tmp_path: Path) -> None:
    """For the operator page: each task queue's depth and its consumers (the `dicomcr worker`
    processes), as RabbitMQ reports them; unknown, and said, while the broker is unreachable."""
    from dicomcr.config import Policy
    from services.workqueue.amqp import AmqpQueue
    from services.workqueue.base import TaskKind, TranscodeTask

    queue = AmqpQueue(rabbitmq.url, tmp_path, DELIVERY_LIMIT)
    try:
        queue.submit(TranscodeTask("1.2.3.9", tmp_path / "in.dcm", tmp_path / "out",
                                   Policy.parse("20")))
        with rabbitmq.connection() as conn:  # a worker listening on the infer queue
            consumer = conn.Consumer(Queue("dicomcr.infer", channel=conn.default_channel,
                                           no_declare=True), callbacks=[lambda *_: None])
            consumer.consume()
            view = {line.kind: line for line in queue.describe().lines}
        assert "RabbitMQ at" in queue.describe().backend
        assert (view[TaskKind.TRANSCODE].running, view[TaskKind.TRANSCODE].waiting,
                view[TaskKind.TRANSCODE].workers) == (1, 1, 0)
        assert (view[TaskKind.INFER].waiting, view[TaskKind.INFER].workers) == (0, 1)
    finally:
        queue.close()
    from peers import free_port

    down = AmqpQueue(f"amqp://guest:guest@127.0.0.1:{free_port()}//", tmp_path / "d", 2)
    try:
        lines = down.describe().lines
        assert all(line.waiting is None and line.workers is None for line in lines)
        assert down.warnings() and "unreachable" in down.warnings()[0]
    finally:
        down.close()
