"""Real DICOM peers from Debian's packages, found on PATH.

Outside CI a missing peer skips the test that needs it; under CI=true it fails, because CI
installs every peer and a skip there would hide a broken install step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.orthanc import LocalOrthanc, PeerError, free_port
from services.orthanc import stop_process as stop
from services.orthanc import wait_for_port as _wait_for_port

__all__ = ["free_port", "stop"]

APT_PACKAGE = {
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
}


def require(tool: str) -> str:
    """The path of the Debian package's `tool`; skip when missing, fail under CI=true."""
    # The system's directories first: pynetdicom installs its own storescu/echoscu into the
    # venv's bin, which would otherwise shadow DCMTK's when the venv is first on PATH.
    path = shutil.which(tool, path="/usr/bin:/usr/sbin") or shutil.which(tool)
    if path is None:
        package = APT_PACKAGE.get(tool, tool)
        message = f"{tool} is not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " and CI=true requires every peer")
        pytest.skip(message)
    return path


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
    """Orthanc as the PACS: its own folder, DICOM and HTTP on free loopback ports, no plugins."""

    def __init__(self, folder: Path, aet: str = "ORTHANC", dicom_port: int | None = None) -> None:
        try:
            super().__init__(folder, require("Orthanc"), aet, dicom_port)
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
