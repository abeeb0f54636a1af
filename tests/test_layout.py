"""The project's own rules, checked: ruff clean, the library never imports the services, its
packages import only downward, no module of the library or the services is part of an import
cycle, SQL and sqlite3 belong to the job store alone, and the command modules stay thin."""

from __future__ import annotations

import ast
import itertools
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("dicomcr", "services")  # the packages whose modules these rules cover
CLI_MODULES = (ROOT / "dicomcr" / "cli.py", ROOT / "services" / "cli.py")
CLI_LINES = 770  # the command modules together: parsing, one library call, printing
COMMAND_LINES = 45  # one command function, its def line to its last line
STORE_FILE = "jobs.sqlite"  # the job store's file name: spelled in one module, imported elsewhere


def _module_name(path: Path, root: Path = ROOT) -> str:
    """services/stages/infer.py -> services.stages.infer; a package's __init__.py -> the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of SOURCES (in the checkout `root`) by its dotted name."""
    return {_module_name(p, root): p for folder in SOURCES
            for p in sorted((root / folder).rglob("*.py"))}


def _imports(path: Path, root: Path = ROOT) -> Iterator[tuple[str, int]]:
    """(module, line) of every import in `path`, wherever it stands (in a function, under
    TYPE_CHECKING), relative ones resolved; `from a import b` is a.b when that is a module of
    SOURCES, else a."""
    name = _module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - (node.level - 1)] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                inner = f"{module}.{alias.name}"
                yield (inner if inner in _modules(root) else module), node.lineno


def test_library_never_imports_services() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in (ROOT / "dicomcr").rglob("*.py")
                 for module, line in _imports(p) if module.split(".")[0] == "services"]
    assert offenders == []


# Each level may import the levels before it, never those after it nor, across packages, its own:
# codec -> dicom -> data, models -> experiments, inference -> observers -> audit -> cli.
LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "codec", "config", "outputs"}),  # __init__: the version only
    frozenset({"dicom", "jobs"}),  # jobs: the node's job store (SQLite), over config
    frozenset({"data", "models", "explain", "transcode", "net"}),
    frozenset({"phantom"}),
    frozenset({"experiments", "inference"}),
    frozenset({"observers"}),  # model observers, over codec, dicom, data, phantom, experiments.paper
    frozenset({"audit"}),  # over observers too
    frozenset({"cli"}),
    frozenset({"__main__"}),  # python -m dicomcr: the library's commands
)


def _package(path: Path) -> str:
    """dicomcr/<package>/... (jobs/store.py included) or dicomcr/<module>.py -> its name."""
    parts = path.relative_to(ROOT / "dicomcr").parts
    return parts[0] if len(parts) > 1 else path.stem


def _imported(path: Path) -> set[str]:
    """The dicomcr packages `path` imports, anywhere in it (lazy imports included)."""
    found = set()
    for module, _ in _imports(path):
        parts = module.split(".")
        if parts[0] == "dicomcr":
            found.add(parts[1] if len(parts) > 1 else "__init__")
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


def _in_job_store(path: Path) -> bool:
    """Part of the job store: the package dicomcr/jobs/ (dicomcr/jobs.py before it was one)."""
    return ROOT / "dicomcr" in path.parents and _package(path) == "jobs"


def test_no_sql_outside_the_job_store() -> None:
    """The job store is the only code that speaks SQL: the node, `dicomcr status` and the audit
    read and write the store through its methods."""
    sql = re.compile(r"\bSELECT\b|\bUPDATE\s+\w+\s+SET\b|\bINSERT\s+INTO\b|sqlite3\.connect")
    offenders = [str(p.relative_to(ROOT)) for p in _modules().values()
                 if not _in_job_store(p) and sql.search(p.read_text())]
    assert offenders == []


def test_only_the_job_store_imports_sqlite3() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in _modules().values()
                 if not _in_job_store(p)
                 for module, line in _imports(p) if module.split(".")[0] == "sqlite3"]
    assert offenders == [], (
        "sqlite3 is imported outside dicomcr/jobs/ at " + ", ".join(offenders) + ": call the job "
        "store's methods instead, and catch the store's own exception type, which dicomcr/jobs/ "
        "raises in place of sqlite3's")


def _strings(path: Path) -> Iterator[tuple[str, int]]:
    """(text, line) of each string constant of `path`'s code, f-strings' parts included;
    docstrings and comments are prose, not code, and are left out."""
    tree = ast.parse(path.read_text())
    prose = {id(node.body[0].value) for node in ast.walk(tree)
             if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
             and node.body and isinstance(node.body[0], ast.Expr)
             and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            yield node.value, node.lineno


def test_the_store_file_name_is_spelled_once() -> None:
    spelled = {f"{p.relative_to(ROOT)}:{line}" for p in _modules().values()
               for text, line in _strings(p) if STORE_FILE in text}
    modules = {place.partition(":")[0] for place in spelled}
    assert len(modules) == 1, (
        f"{STORE_FILE!r} is spelled in the code of {len(modules)} modules, at "
        f"{', '.join(sorted(spelled)) or 'none'}: keep it in one constant of dicomcr/jobs/ and "
        "import that constant (or the function that gives the store's path) everywhere else")


def _import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {module of SOURCES it imports: the first line that does}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in _modules(root).items():
        edges = graph.setdefault(name, {})
        for module, line in _imports(path, root):
            if module in _modules(root) and module != name:
                edges.setdefault(module, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """For each module on a cycle, the shortest cycle through it (a, b, ..., a), each cycle once,
    starting at its smallest name."""
    found: set[tuple[str, ...]] = set()
    for start in sorted(graph):
        before: dict[str, str] = {}
        queue = deque([start])
        while queue and start not in before:
            here = queue.popleft()
            for nxt in sorted(graph[here]):
                if nxt not in before:
                    before[nxt] = here
                    queue.append(nxt)
        if start not in before:
            continue
        cycle = [start]
        while len(cycle) == 1 or cycle[-1] != start:
            cycle.append(before[cycle[-1]])
        ring = cycle[::-1][:-1]  # start ... back to before start
        turn = ring.index(min(ring))
        found.add(tuple(ring[turn:] + ring[:turn]))
    return [[*ring, ring[0]] for ring in sorted(found)]


def test_the_cycle_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Lazy, TYPE_CHECKING, relative (`from . import b`, `from ..x import y`) and absolute imports
    all make edges; a name imported from a package is an edge to its __init__."""
    files = {
        "dicomcr/__init__.py": "",
        "dicomcr/p/__init__.py": "from .a import f\n",
        "dicomcr/p/a.py": "def f():\n    from . import b\n",
        "dicomcr/p/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from ..q import c\n",
        "dicomcr/q/__init__.py": "",
        "dicomcr/q/c.py": "import dicomcr.p.a\nfrom dicomcr.p import f\n",
        "dicomcr/q/d.py": "from dicomcr.q import c\n",
        "services/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = _import_graph(tmp_path)
    assert graph["dicomcr.q.c"] == {"dicomcr.p.a": 1, "dicomcr.p": 2}
    assert graph["dicomcr.q.d"] == {"dicomcr.q.c": 1}
    assert _cycles(graph) == [["dicomcr.p", "dicomcr.p.a", "dicomcr.p.b", "dicomcr.q.c", "dicomcr.p"],
                              ["dicomcr.p.a", "dicomcr.p.b", "dicomcr.q.c", "dicomcr.p.a"]]


def test_no_import_cycles() -> None:
    """Every import counts, a lazy one in a function or one under TYPE_CHECKING too: each still
    says that the two modules need each other."""
    graph = _import_graph()
    said = []
    for cycle in _cycles(graph):
        where = ", ".join(f"{_modules()[a].relative_to(ROOT)}:{graph[a][b]}"
                          for a, b in itertools.pairwise(cycle))
        said.append(f"{' -> '.join(cycle)} (imports at {where})")
    assert said == [], (
        "import cycles; break each by moving what one side needs from the other into a module "
        "below both (or into the side that needs it), so that the imports run one way "
        "(importing inside a function or under TYPE_CHECKING does not break a cycle):\n"
        + "\n".join(said))


def _commands(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, def line, last line) of each function of `path` decorated `@<app>.command`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(call, ast.Attribute) and call.attr == "command":
                    yield node.name, node.lineno, node.end_lineno
                    break


def test_the_command_modules_stay_thin() -> None:
    """A command parses its arguments, calls one library function and prints: the work lives in
    the library, where it is tested without a command line."""
    lines = {path: len(path.read_text().splitlines()) for path in CLI_MODULES}
    total = sum(lines.values())
    over = [f"the command modules hold {total} lines ("
            + ", ".join(f"{p.relative_to(ROOT)} {n}" for p, n in lines.items())
            + f"), {total - CLI_LINES} over the budget of {CLI_LINES}"] if total > CLI_LINES else []
    over += [f"{path.relative_to(ROOT)}:{first} {name}() is {last - first + 1} lines (def line to "
             f"last line), over {COMMAND_LINES}"
             for path in _modules().values() for name, first, last in _commands(path)
             if last - first + 1 > COMMAND_LINES]
    assert over == [], ("\n".join(over) + "\nmove the work of each long command into a library "
                        "function that it calls, leaving it to parse, call and print")


def test_the_command_line_and_the_workers_start_without_the_heavy_libraries() -> None:
    """`services.cli` is what the node's spawned workers import first (and every command): it
    must not import torch, pyplot or scipy.stats, which cost seconds at each worker's start (a
    page import that pulled in the observers once slowed the node's end-to-end run by 70 %)."""
    code = ("import sys, services.cli; print(','.join(m for m in ('torch', 'matplotlib.pyplot', "
            "'scipy.stats') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "", run.stdout + run.stderr
