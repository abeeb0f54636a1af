"""Local processes on loopback: a free port, waiting until a process listens, stopping it (used by
`dicomcr demo`, the tests and the benches)."""

from __future__ import annotations

import socket
import subprocess
import time


class PeerError(RuntimeError):
    """A local peer that would not start or listen; the message says why."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port; PeerError saying why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise PeerError(f"{process.args[0]} exited with {process.returncode}: {out}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    process.kill()
    raise PeerError(f"{process.args[0]} did not listen on port {port} within {timeout} s")


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM a process, SIGKILL it if it has not exited within `timeout`."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
