"""The command line as one app, and the one way every command takes several CRs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dicomcr.cli import app as library_app
from dicomcr.codec.j2k import PAPER_CRS, parse_crs
from dicomcr.data.dataset import PHANTOM_DICOM
from dicomcr.models import CNN3, CNN3Spec
from dicomcr.models.modelfile import ModelInfo, save_model

NODE_COMMANDS = {"serve", "worker", "status", "retry", "conformance", "demo"}


def _names(app: typer.Typer) -> set[str]:
    """The commands an app offers, as Typer composes them (its public `get_command`)."""
    return set(typer.main.get_command(app).commands)


def test_python_dash_m_runs_every_command() -> None:
    """`python -m services` runs the whole command line (the console script's app); `python -m
    dicomcr` the library's commands, its help naming where the node's are."""
    run = subprocess.run([sys.executable, "-m", "services", "--help"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert run.returncode == 0, run.stderr
    for name in NODE_COMMANDS | {"phantom", "transcode", "cv", "audit"}:
        assert f" {name} " in run.stdout, name
    library = subprocess.run([sys.executable, "-m", "dicomcr", "--help"], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert library.returncode == 0, library.stderr
    assert " phantom " in library.stdout and " serve " not in library.stdout
    assert "python -m services" in " ".join(library.stdout.split())
    for module in ("dicomcr", "services"):
        version = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                                 text=True, timeout=120)
        assert version.returncode == 0 and version.stdout.startswith("dicomcr "), module


def test_the_node_commands_do_not_change_the_library_app() -> None:
    before = _names(library_app)
    from services.cli import app

    assert _names(library_app) == before and not before & NODE_COMMANDS
    assert _names(app) == before | NODE_COMMANDS


@pytest.mark.parametrize(("values", "expected"), [
    (["20"], [20.0]),
    (["1", "1000"], [1.0, 1000.0]),  # repeated: both kept, never the last alone
    (["1,20", "20", "1000"], [1.0, 20.0, 1000.0]),
    (["1000-11000"], [1000.0, 5000.0, 10000.0, 11000.0]),
    (["paper"], list(PAPER_CRS)),
    (["paper", "30"], sorted([*PAPER_CRS, 30.0])),
])
def test_crs_add_up_over_repeated_values(values: list[str], expected: list[float]) -> None:
    assert parse_crs(values) == expected


def test_paper_names_one_and_the_ten_lossy_crs() -> None:
    assert len(PAPER_CRS) == 11 and PAPER_CRS[0] == 1.0 and PAPER_CRS[-1] == 11000.0


@pytest.mark.parametrize(("values", "message"), [
    (["abc"], "CRs are 'paper'"),
    (["0.5"], "> 1"),
    (["2-3"], "names no CR"),
    ([], "no CR given"),
])
def test_bad_crs_are_refused(values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_crs(values)


@pytest.mark.parametrize("command", ["evaluate", "cv", "saliency", "transcode"])
def test_every_cr_option_is_repeatable_with_the_same_forms(command: str) -> None:
    result = CliRunner().invoke(library_app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "repeatable" in result.output and "'paper'" in result.output


def test_train_cr_names_one_cr(tmp_path) -> None:
    result = CliRunner().invoke(library_app, ["train", str(tmp_path), "--cr", "1", "--cr", "1000",
                                              "--out", str(tmp_path / "m.dcmcr")])
    assert result.exit_code == 2 and "for a mixture use --cr-mix" in result.output


def test_outputs_that_cannot_be_written_are_refused_in_one_line_before_the_work(
        small_cohort: Path, tmp_path: Path) -> None:
    """A file where a folder is wanted, a folder where a file is: one line, exit 2, no
    traceback, and nothing computed first."""
    afile = tmp_path / "afile"
    afile.write_text("")
    model = tmp_path / "m.dcmcr"
    spec = CNN3Spec(channels=(4, 8, 8), hidden=(16, 8), input_size=(64, 64))
    save_model(CNN3(spec), ModelInfo(
        architecture="cnn3", spec=spec.as_dict(), trained_crs=[20.0], data_fingerprint="abc",
        preprocessing={"scale": 0.3, "canvas": [100, 120], "input_size": [64, 64]},
        threshold=0.5), model)
    study = sorted((small_cohort / PHANTOM_DICOM).iterdir())[0]
    report = afile / "r.html"
    for args, said in (
            (["saliency", str(model), str(study), "--out", str(afile)],
             f"{afile} exists and is not a folder"),
            (["evaluate", str(model), str(small_cohort), "--predictions", str(tmp_path)],
             f"{tmp_path} is a folder: give a file name"),
            (["report", str(tmp_path), "--out", str(report)],
             f"cannot write {report}: {afile} exists and is not a folder"),
            (["transcode", str(study), str(afile), "--cr", "20", "--workers", "1"],
             f"{afile} exists and is not a folder")):
        result = CliRunner().invoke(library_app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.count("error:") == 1 and said in result.output, result.output
        assert "Traceback" not in result.output


def test_conformance_into_a_path_it_cannot_write_is_one_line(tmp_path) -> None:
    from services.cli import app

    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(app, ["conformance", "--out", str(tmp_path / "afile" / "c.md")])
    assert result.exit_code == 2 and "cannot write" in result.output
    assert "Traceback" not in result.output


def test_send_says_that_the_calling_ae_picks_the_nodes_site() -> None:
    """A dicomcr node picks the sending site (and its policy) by the calling AE title: `send
    --help` says so (issue 21, part 6)."""
    result = CliRunner().invoke(library_app, ["send", "--help"], env={"COLUMNS": "250"})
    said = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "A dicomcr node picks the sending site by it" in said and "--calling-aet" in said


def test_a_value_out_of_a_fixed_set_is_refused_in_the_librarys_words() -> None:
    """Options with a fixed set of values are the library's enums: their values in --help, and a
    value out of the set refused before any work, exit 2."""
    for args, said in ((["cv", "x", "--out", "y", "--device", "tpu"], "unknown device 'tpu'; choose "
                        "one of auto, cpu, cuda"),
                       (["audit", "x", "--fail-on", "always"], "unknown --fail-on value 'always'"),
                       (["train", "x", "--out", "y", "--cr", "1", "--format", "excel"],
                        "unknown dataset format 'excel'")):
        result = CliRunner().invoke(library_app, args, env={"COLUMNS": "250"})
        assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output
    shown = " ".join(CliRunner().invoke(library_app, ["cv", "--help"], env={"COLUMNS": "250"})
                     .output.split())
    assert "[local|ray]" in shown and "[cnn3|resnet18]" in shown and "[auto|cpu|cuda]" in shown
