"""Real DICOM peers from Debian's packages, found on PATH, and a RabbitMQ broker of its own.

Outside CI a missing peer skips the test that needs it; under CI=true it fails, because CI
installs every peer and a skip there would hide a broken install step.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.orthanc import LocalOrthanc, find_dicomweb_plugin
from services.processes import PeerError, free_port
from services.processes import stop_process as stop
from services.processes import wait_for_port as _wait_for_port

__all__ = ["free_port", "stop"]

APT_PACKAGE = {
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "dciodvfy": "dicom3tools",
    "gdcminfo": "libgdcm-tools",
    "gdcmconv": "libgdcm-tools",
    "storescu": "dcmtk",
    "echoscu": "dcmtk",
    "storescp": "dcmtk",
    "opj_decompress": "libopenjp2-tools",
    "opj_compress": "libopenjp2-tools",
    "Orthanc": "orthanc",
    "ojph_compress": "openjph-tools",
    "rabbitmq-server": "rabbitmq-server",
    "epmd": "erlang-base",
}


def require(tool: str) -> str:
    """The path of the Debian package's `tool`; skip when missing, fail under CI=true."""
    # The system's directories first: pynetdicom installs its own storescu/echoscu into the
    # venv's bin, which would otherwise shadow DCMTK's when the venv is first on PATH.
    path = shutil.which(tool, path="/usr/bin:/usr/sbin") or shutil.which(tool)
    if path is None:
        _missing(tool)
    return path


def _missing(tool: str) -> None:
    """Skip the test that needs `tool`; fail it under CI=true, which installs every peer."""
    package = APT_PACKAGE.get(tool, tool)
    message = f"{tool} is not installed (apt-get install {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " and CI=true requires every peer")
    pytest.skip(message)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Validate one file against its IOD with dicom3tools; return (errors, warnings)."""
    tool = require("dciodvfy")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port, or fail saying why."""
    try:
        _wait_for_port(port, process, timeout)
    except PeerError as exc:
        pytest.fail(str(exc))


class StoreSCP:
    """DCMTK's storescp on a free loopback port, writing what it receives into a folder."""

    def __init__(self, folder: Path, aet: str = "STORESCP", *extra: str) -> None:
        self.folder, self.aet, self.port = folder, aet, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [require("storescp"), "--aetitle", aet, "--output-directory", str(folder),
             "+xa", *extra, str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_port(self.port, self.process)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.process)


class Orthanc(LocalOrthanc):
    """Orthanc as the PACS: its own folder, DICOM and HTTP on free loopback ports, no plugins
    unless `dicomweb` (Debian's orthanc-dicomweb: missing -> skip, fail under CI=true); the other
    options are LocalOrthanc's."""

    def __init__(self, folder: Path, aet: str = "ORTHANC", dicom_port: int | None = None,
                 **options: Any) -> None:
        binary = require("Orthanc")
        if options.get("dicomweb") and find_dicomweb_plugin() is None:
            _missing("orthanc-dicomweb")
        try:
            super().__init__(folder, binary, aet, dicom_port, **options)
        except PeerError as exc:
            pytest.fail(str(exc))

    def start(self) -> None:
        try:
            super().start()
        except PeerError as exc:
            pytest.fail(str(exc))

    def instances(self) -> list[dict]:
        """Every stored instance: its simplified tags plus its transfer syntax."""
        out = []
        for instance in self.get("/instances"):
            tags = self.get(f"/instances/{instance}/tags?simplify")
            tags["TransferSyntax"] = self.get(f"/instances/{instance}/metadata/TransferSyntax",
                                              text=True)
            out.append(tags)
        return out

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict]:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.get("/instances")) >= count:
                return self.instances()
            time.sleep(0.25)
        pytest.fail(f"Orthanc holds {len(self.get('/instances'))} instances, {count} expected")


# Debian's broker script itself: /usr/sbin/rabbitmq-server is a wrapper that runs it as the
# `rabbitmq` user with the system's folders, which a test must not touch.
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def require_rabbitmq() -> Path:
    """The folder of Debian's RabbitMQ scripts; skip when missing, fail under CI=true."""
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        _missing("rabbitmq-server")
    return RABBITMQ_SERVER.parent


def _die_with_us() -> None:
    """In a child before exec: SIGTERM it when the thread that started it ends (Linux)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# Brokers and their epmd are started from this one thread, which lives as long as the test
# process: with _die_with_us they get SIGTERM if the process dies (a killed pytest) instead of
# staying behind, and a restart from pause()'s short-lived thread does not end them with it.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")


def _spawn(args: list[str], **options) -> subprocess.Popen:
    return _SPAWNER.submit(subprocess.Popen, args, preexec_fn=_die_with_us, **options).result()


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class LocalRabbitMQ:
    """RabbitMQ as the current user, on free loopback ports, with everything in `folder`.

    Not the system service: its own node name, data folder (`mnesia/`), logs (`log/`, and the
    script's output in `server.log`), configuration, an empty plugin list (no management plugin)
    and its own epmd on a free port, so brokers of parallel tests and a system epmd never meet.
    `stop()` and `kill()` leave the data, and `start()` brings the same node back on the same
    ports: durable queues (quorum queues are) and persistent messages survive. `close()` stops the
    broker and its epmd. Raises PeerError when it will not start, quoting its output.
    """

    def __init__(self, folder: Path, *, bin_dir: Path = RABBITMQ_SERVER.parent,
                 consumer_timeout_ms: int = 1_800_000, start: bool = True) -> None:
        self.folder = Path(folder)
        self.bin_dir = Path(bin_dir)
        self.port, self.dist_port, self.epmd_port = _free_ports(3)
        self.nodename = f"rabbit-{secrets.token_hex(4)}@localhost"
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None  # the beam.smp process, the broker itself
        self._epmd: subprocess.Popen | None = None
        for sub in ("mnesia", "log", "home"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.config_file = self.folder / "rabbitmq.conf"
        self.config_file.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"  # guest/guest, from loopback only
            f"consumer_timeout = {consumer_timeout_ms}\n"  # above the longest task, in ms
            "log.console = false\n")
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.config_file),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),  # none
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbit.pid"),
            # Distribution (the CLI's way in) on loopback only, like AMQP.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "HOME": str(self.folder / "home"),  # the .erlang.cookie the CLI shares with the node
        }
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connection(self, **transport_options):
        """A kombu Connection to the broker (not yet connected); close it, or use `with`."""
        from kombu import Connection

        return Connection(self.url, connect_timeout=5, transport_options=transport_options)

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker (again: same node, data and ports) and wait until AMQP answers."""
        if self.running:
            return
        self._start_epmd()
        (self.folder / "rabbit.pid").unlink(missing_ok=True)
        with open(self.folder / "server.log", "ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches pytest, not the broker.
            self.process = _spawn(
                [str(self.bin_dir / "rabbitmq-server")], env=self.env, cwd=self.folder,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            self._wait_until_ready(timeout)
        except PeerError:
            self.kill()
            raise

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        epmd = shutil.which("epmd") or shutil.which("epmd", path="/usr/lib/erlang/bin")
        if epmd is None:
            raise PeerError("epmd is not installed (apt-get install erlang-base)")
        self._epmd = _spawn(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"], env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait_for_port(self.epmd_port, self._epmd, timeout=10)

    def _wait_until_ready(self, timeout: float) -> None:
        """Until the AMQP port accepts and a kombu connection opens (the broker has booted)."""
        from kombu import Connection

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(f"rabbitmq-server exited with {self.process.returncode}: "
                                f"{self._tail()}")
            with socket.socket() as sock:
                sock.settimeout(0.2)
                listening = sock.connect_ex(("127.0.0.1", self.port)) == 0
            if listening:
                try:
                    with Connection(self.url, connect_timeout=2) as conn:
                        conn.ensure_connection(max_retries=1)
                        conn.default_channel  # noqa: B018  (opens a channel: the vhost is up)
                    self.pid = self._beam_pid()
                    return
                except Exception as exc:
                    last = exc
            time.sleep(0.1)
        raise PeerError(f"RabbitMQ did not answer on port {self.port} within {timeout} s "
                        f"(last: {last!r}): {self._tail()}")

    def _beam_pid(self) -> int:
        """The broker's own process (beam.smp), a child of the script: its pid file says."""
        pid_file = self.folder / "rabbit.pid"
        for _ in range(50):
            text = pid_file.read_text().strip() if pid_file.exists() else ""
            if text.isdigit():
                return int(text)
            time.sleep(0.1)
        raise PeerError(f"RabbitMQ wrote no pid file ({pid_file})")

    def _tail(self, lines: int = 30) -> str:
        out = []
        for path in (self.folder / "server.log", self.folder / "log" / f"{self.nodename}.log"):
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def stop(self, timeout: float = 60.0) -> None:
        """Shut the broker down cleanly (SIGTERM: it closes its connections and syncs)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # The script's trap forwards SIGTERM to the broker and waits for it.
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._reap()

    def kill(self) -> None:
        """SIGKILL the broker (beam.smp), as a crash or a pulled plug: nothing is flushed."""
        if self.process is None:
            return
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the script, and a broker not yet named
        self.process.wait()
        self._reap()

    def _reap(self) -> None:
        """Wait until the broker's process has exited (its ports closed with it)."""
        if self.pid is not None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and Path(f"/proc/{self.pid}").exists():
                if Path(f"/proc/{self.pid}/stat").read_text().split()[2] == "Z":
                    break  # a zombie holds no port; whoever is its parent will reap it
                time.sleep(0.05)
        self.process, self.pid = None, None

    @contextlib.contextmanager
    def down(self, kill: bool = False) -> Iterator[None]:
        """The broker is down inside the block (stopped, or SIGKILLed) and back after it."""
        self.kill() if kill else self.stop()
        try:
            yield
        finally:
            self.start()

    def pause(self, seconds: float, kill: bool = False) -> threading.Thread:
        """Take the broker down now (stop, or SIGKILL) and start it again `seconds` later, in
        the background; join() the returned thread to wait for it to be back (it raises
        PeerError there if the broker would not start)."""
        self.kill() if kill else self.stop()
        return _Restart(self, seconds)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """rabbitmqctl against this broker (e.g. "list_queues", "name", "messages"): its stdout."""
        env = dict(self.env)
        cli_port = str(free_port())  # the CLI's own distribution port, not the shared default
        env.update(RABBITMQ_CTL_DIST_PORT_MIN=cli_port, RABBITMQ_CTL_DIST_PORT_MAX=cli_port)
        run = subprocess.run([str(self.bin_dir / "rabbitmqctl"), "--node", self.nodename, *args],
                             env=env, cwd=self.folder, capture_output=True, text=True,
                             timeout=timeout)
        if run.returncode != 0:
            raise PeerError(f"rabbitmqctl {' '.join(args)} exited with {run.returncode}: "
                            f"{run.stdout}{run.stderr}")
        return run.stdout

    def add_vhost(self, name: str) -> str:
        """A new virtual host that guest may use (its queues start empty): its URL."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "--vhost", name, "guest", ".*", ".*", ".*")
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{name}"

    def ready(self, queue: str, url: str | None = None) -> int | None:
        """The messages ready in a queue now (not those delivered and unacknowledged), or None
        when it does not exist: a passive declare, which the queue itself answers. `url`: of
        another vhost (add_vhost's)."""
        from amqp.exceptions import NotFound
        from kombu import Connection

        with Connection(url or self.url, connect_timeout=5) as conn:
            try:
                return conn.default_channel.queue_declare(queue, passive=True).message_count
            except NotFound:
                return None

    def queue_counts(self, queue: str, vhost: str = "/") -> tuple[int, int] | None:
        """(ready, unacknowledged) messages of a queue as `rabbitmqctl list_queues` reports
        them, or None when it does not exist. The broker refreshes these figures every few
        seconds (a quorum queue's every 5 s): poll for the value you expect."""
        out = self.ctl("list_queues", "--vhost", vhost, "--quiet", "--no-table-headers",
                       "name", "messages_ready", "messages_unacknowledged")
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) == 3 and fields[0] == queue:
                return int(fields[1]), int(fields[2])
        return None

    def close(self) -> None:
        """Stop the broker and the epmd it used (this epmd only: ours, on our port)."""
        try:
            self.stop()
        finally:
            if self._epmd is not None:
                stop(self._epmd, timeout=5)
                self._epmd = None


class _Restart(threading.Thread):
    def __init__(self, broker: LocalRabbitMQ, seconds: float) -> None:
        super().__init__(name=f"restart {broker.nodename}", daemon=True)
        self.broker, self.seconds, self.error = broker, seconds, None
        self.start()

    def run(self) -> None:
        time.sleep(self.seconds)
        try:
            self.broker.start()
        except BaseException as exc:  # PeerError, or pytest's Failed from RabbitMQ.start
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


class RabbitMQ(LocalRabbitMQ):
    """LocalRabbitMQ for a test: missing -> skip (fail under CI=true); won't start -> fail."""

    def __init__(self, folder: Path, **options) -> None:
        bin_dir = require_rabbitmq()
        require("epmd")
        super().__init__(folder, bin_dir=bin_dir, **options)

    def start(self, timeout: float = 90.0) -> None:
        try:
            super().start(timeout)
        except PeerError as exc:
            self.close()
            pytest.fail(str(exc))
