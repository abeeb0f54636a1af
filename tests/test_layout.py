"""The project's own rules, checked: ruff clean, the library never imports the services, and its
packages import only downward (no cycles)."""

from __future__ import annotations

import ast
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


# Each level may import the levels before it, never those after it nor, across packages, its own:
# codec -> dicom -> data, models -> experiments, inference -> audit -> cli.
LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "codec", "config", "outputs"}),  # __init__: the version only
    frozenset({"dicom", "jobs"}),  # jobs: the node's job store (SQLite), over config
    frozenset({"data", "models", "explain", "transcode", "net"}),
    frozenset({"phantom"}),
    frozenset({"experiments", "inference"}),
    frozenset({"audit"}),
    frozenset({"cli", "__main__"}),
)


def _package(path: Path) -> str:
    """dicomcr/<package>/... or dicomcr/<module>.py -> its name."""
    parts = path.relative_to(ROOT / "dicomcr").parts
    return parts[0] if len(parts) > 1 else path.stem


def _imported(path: Path) -> set[str]:
    """The dicomcr packages `path` imports, anywhere in it (lazy imports included)."""
    folders = list(path.relative_to(ROOT / "dicomcr").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[list[str]] = []
        if isinstance(node, ast.ImportFrom) and node.level:  # relative to the module's folder
            base = folders[:len(folders) - (node.level - 1)]
            module = node.module.split(".") if node.module else []
            targets = [base + module] if module else [[*base, a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dicomcr"):
            targets = [node.module.split(".")[1:]]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "dicomcr"]
        found.update(t[0] if t else "__init__" for t in targets)
    return found


def test_packages_import_only_downward() -> None:
    level = {name: i for i, names in enumerate(LEVELS) for name in names}
    wrong = []
    for path in sorted((ROOT / "dicomcr").rglob("*.py")):
        mine = _package(path)
        assert mine in level, f"{mine} ({path}) has no level in LEVELS"
        for other in _imported(path) - {mine}:
            if other not in level or level[other] >= level[mine]:
                wrong.append(f"{path.relative_to(ROOT)} imports {other}")
    assert wrong == []


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is part of the test extras: pip install -e '.[test]'")
    run = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_sql_outside_the_job_store() -> None:
    """dicomcr/jobs.py is the only code that speaks SQL: the node, `dicomcr status` and the audit
    read and write the store through its methods (sqlite3's exception types may be caught)."""
    sql = re.compile(r"\bSELECT\b|\bUPDATE\s+\w+\s+SET\b|\bINSERT\s+INTO\b|sqlite3\.connect")
    offenders = [str(p.relative_to(ROOT)) for folder in ("dicomcr", "services")
                 for p in sorted((ROOT / folder).rglob("*.py"))
                 if p != ROOT / "dicomcr" / "jobs.py" and sql.search(p.read_text())]
    assert offenders == []
