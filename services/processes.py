"""Local peer processes on loopback: free ports, waiting for a listener, and an Orthanc PACS
started in its own folder (used by `dicomcr demo` and by the tests)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


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


def find_orthanc() -> str | None:
    """The Orthanc executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")


class LocalOrthanc:
    """Orthanc with its own folder, DICOM and HTTP on free loopback ports, no plugins."""

    def __init__(self, folder: Path, binary: str, aet: str = "ORTHANC",
                 dicom_port: int | None = None) -> None:
        self.folder, self.aet = Path(folder), aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "dicomcr", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "DicomAet": aet,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "Plugins": [],
        }))
        self.process = subprocess.Popen([binary, str(config)], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        try:
            wait_for_port(self.http_port, self.process)
            wait_for_port(self.dicom_port, self.process)
        except PeerError:
            stop_process(self.process)
            raise

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/app/explorer.html"

    def get(self, path: str, text: bool = False, raw: bool = False):
        """Orthanc's REST API: JSON by default, `text` for a string, `raw` for the bytes."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            body = r.read()
        if raw:
            return body
        return body.decode() if text else json.loads(body)

    def stop(self) -> None:
        stop_process(self.process)
