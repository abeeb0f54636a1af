"""`dicomcr demo` end to end, quick settings: Orthanc as the PACS, two sites, a summary that
reads at 80 columns, and an audit with the model's verdict at each site's CR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peers import require


@pytest.mark.usefixtures("detectability_cache")  # the audits' observer runs, shared
def test_the_demo_runs_end_to_end_and_stops_its_servers(tmp_path: Path) -> None:
    require("Orthanc")
    run = subprocess.run([sys.executable, "-m", "services.cli", "demo", str(tmp_path / "demo"),
                          "--studies", "2", "--train-studies", "16", "--epochs", "1",
                          "--test-studies", "12"],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                         env={**os.environ, "COLUMNS": "80"})  # a log, CI, a small window
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, run.stdout
    said = " ".join(run.stdout.split())
    assert "8 mammograms (JPEG 2000), 8 saliency captures, 2 structured reports" in said
    assert "P(malignant) PH11-00000: L " in said and "PH11-00001: L " in said
    assert "…" not in run.stdout  # no cell cut

    # The audit: what each site stores on one line, then its verdicts; nothing cut mid-word.
    sites = [line for line in lines if line.startswith("hospital-")]
    assert [line.split()[0] for line in sites] == ["hospital-a", "hospital-b"] * 2, run.stdout
    a, b, verdict_a, verdict_b = sites
    assert a.split()[1:4] == ["4", "(1)", "20"] and "JPEG 2000 (4)" in a
    assert b.split()[1:4] == ["4", "(1)", "100"] and "JPEG 2000 (4)" in b
    assert verdict_a.split()[1] == "within:" and verdict_b.split()[1] == "violation:"
    header = next(i for i, line in enumerate(lines) if "model at the site's CR" in line)
    start = lines[header].index("model at the site's CR")
    table = []
    for line in lines[header + 2:]:  # the verdicts' rows and their continuation lines
        if not line.startswith(("hospital-", " ")):
            break
        table.append(line[start:])
    model = " ".join(" ".join(table).split())
    for site_cr in ("20", "100"):  # a verdict with AUROC and CI at each site's CR, against CR 1
        assert f") at CR {site_cr} vs " in model, model
    # the quick model's CR 1 AUROC CI reaches 0.5 on 30 held-out studies: it cannot judge
    assert model.split()[0] in ("OK:", "degraded:", "cannot") and "M-CR20 AUROC" in model

    # The results the verdicts come from: the quick model at CR 1, 20, 100 on held-out studies.
    results = json.loads((tmp_path / "demo" / "results" / "results.json").read_text())
    assert [(r["model"], r["test_cr"]) for r in results["rows"]] == [
        ("M-CR20", 1.0), ("M-CR20", 20.0), ("M-CR20", 100.0)]
    assert all(0 <= r["auroc_low"] <= r["auroc"] <= r["auroc_high"] <= 1
               for r in results["rows"])
    assert results["meta"]["breasts"] == 24 and results["meta"]["malignant"] >= 2

    assert len(list((tmp_path / "demo" / "saliency").glob("*.png"))) == 8
    # no server outlived the demo
    lingering = subprocess.run(["pgrep", "-f", str(tmp_path / "demo" / "orthanc")],
                               capture_output=True)
    assert lingering.returncode == 1
