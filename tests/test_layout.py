"""The project's own rules, checked: ruff clean, and the library never imports the services."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_library_never_imports_services() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+services\b", re.MULTILINE)
    offenders = [p for p in (ROOT / "dicomcr").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is part of the test extras: pip install -e '.[test]'")
    run = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
