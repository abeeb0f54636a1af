"""`dicomcr demo` end to end, quick settings: Orthanc as the PACS, two sites, a summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from peers import require


def test_the_demo_runs_end_to_end_and_stops_its_servers(tmp_path: Path) -> None:
    require("Orthanc")
    run = subprocess.run([sys.executable, "-m", "services.cli", "demo", str(tmp_path / "demo"),
                          "--studies", "2", "--train-studies", "16", "--epochs", "1"],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                         env={**os.environ, "COLUMNS": "250"})  # no wrapped table cells
    said = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "8 mammograms (JPEG 2000), 8 saliency captures, 2 structured reports" in said
    assert "P(malignant) PH11-00000" in said and "hospital-b" in said and "violation" in said
    assert len(list((tmp_path / "demo" / "saliency").glob("*.png"))) == 8
    # no server outlived the demo
    lingering = subprocess.run(["pgrep", "-f", str(tmp_path / "demo" / "orthanc")],
                               capture_output=True)
    assert lingering.returncode == 1
