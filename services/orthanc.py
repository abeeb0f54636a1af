"""An Orthanc PACS started in its own folder on free loopback ports (used by `dicomcr demo` and by
the tests), optionally with Debian's DICOMweb plugin (orthanc-dicomweb) for STOW-RS both ways."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from .processes import PeerError, free_port, stop_process, wait_for_port

# Where Debian's orthanc-dicomweb puts its plugin: the link that Debian's own Orthanc service
# loads, and the folder of the versioned library it points to.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_LIBRARIES = Path("/usr/lib/orthanc")


def find_orthanc() -> str | None:
    """The Orthanc executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")


def find_dicomweb_plugin() -> Path | None:
    """Debian's DICOMweb plugin for Orthanc (package orthanc-dicomweb), or None."""
    if DICOMWEB_PLUGIN.exists():
        return DICOMWEB_PLUGIN
    return next(iter(sorted(DICOMWEB_LIBRARIES.glob("libOrthancDicomWeb.so*"))), None)


class LocalOrthanc:
    """Orthanc with its own folder, DICOM and HTTP on free loopback ports (or the ones given).

    No plugins by default. `dicomweb`: Debian's DICOMweb plugin, its API at `dicomweb_url`, with
    `dicomweb_servers` as its "Servers" (the DICOMweb peers it may send to). `users`: HTTP basic
    authentication for every REST and DICOMweb request (name: password); `get` then logs in as
    the first. `lua`: Lua scripts (their source) Orthanc runs, e.g. a ReceivedInstanceFilter.
    `stop()` and `start()` bring the same Orthanc back on the same ports, its data kept.
    """

    def __init__(self, folder: Path, binary: str, aet: str = "ORTHANC",
                 dicom_port: int | None = None, *, http_port: int | None = None,
                 dicomweb: bool = False, dicomweb_servers: dict[str, dict] | None = None,
                 users: Mapping[str, str] | None = None, lua: Sequence[str] = ()) -> None:
        self.folder, self.aet, self.binary = Path(folder), aet, binary
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.users = dict(users or {})
        self.folder.mkdir(parents=True, exist_ok=True)
        settings: dict[str, object] = {
            "Name": "dicomcr", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "DicomAet": aet,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
            "DicomCheckCalledAet": False, "Plugins": [],
        }
        if self.users:
            settings["RegisteredUsers"] = self.users
        if lua:
            scripts = []
            for index, source in enumerate(lua):
                script = self.folder / f"script{index}.lua"
                script.write_text(source)
                scripts.append(str(script))
            settings["LuaScripts"] = scripts
        if dicomweb:
            plugin = find_dicomweb_plugin()
            if plugin is None:
                raise PeerError("Orthanc's DICOMweb plugin is not installed "
                                "(apt-get install orthanc-dicomweb)")
            settings["Plugins"] = [str(plugin)]
            settings["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/",
                                    "Servers": dicomweb_servers or {}}
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps(settings))
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start Orthanc (again: same folder, data and ports) and wait until both ports listen."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen([self.binary, str(self.config)], stdout=subprocess.PIPE,
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

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb plugin's base URL (STOW-RS at `{dicomweb_url}/studies`)."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def get(self, path: str, text: bool = False, raw: bool = False):
        """Orthanc's REST API: JSON by default, `text` for a string, `raw` for the bytes."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if self.users:
            user, password = next(iter(self.users.items()))
            login = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {login}")
        with urllib.request.urlopen(request, timeout=10) as r:
            body = r.read()
        if raw:
            return body
        return body.decode() if text else json.loads(body)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
