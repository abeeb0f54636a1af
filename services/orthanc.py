"""An Orthanc PACS started in its own folder on free loopback ports (used by `dicomcr demo` and by
the tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from .processes import PeerError, free_port, stop_process, wait_for_port


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
