"""A phantom cohort streamed into the cache (`cv phantom:...`) is the stored cohort, minus its DICOM
files: the same crops and inputs, bit for bit, the same results.csv; it shares the stored cohort's
cache entries, resumes after a kill, refuses pixels another cohort cached under the same UIDs, and
a bad specification is one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dicomcr.cli import app
from dicomcr.data.cache import cr_reach
from dicomcr.data.dataset import read_phantom_labels
from dicomcr.data.preprocess import Preprocessing
from dicomcr.experiments.run import open_data
from dicomcr.models.modelfile import load_model
from dicomcr.phantom import CohortSpec, write_cohort
from dicomcr.phantom.stream import StreamedCohort

runner = CliRunner()
SPEC = "phantom:studies=20,seed=5,size=small,vendor=ge"  # test_cv's cohort: enough for 2 folds
RUN = ["--cr", "1,20", "--folds", "2", "--epochs", "1", "--input-size", "64", "--batch-size", "8",
       "--seed", "2"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stored") / "cohort"
    write_cohort(CohortSpec.parse(SPEC), out)
    return out


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob(pattern)}


def _home(cache: Path) -> Path:
    (home,) = cache.glob("phantom-*")
    return home


def test_streamed_cv_is_the_stored_cohorts_bit_for_bit(stored: Path, tmp_path: Path) -> None:
    """The same spec stored (one worker) and streamed (two workers, its own cache): every crop and
    every input array equal, results.csv and predictions.csv equal, the labels, phantom.json and
    masks equal; the streamed side never writes a DICOM file."""
    runs = {}
    for name, data, workers in (("stored", str(stored), "1"), ("streamed", SPEC, "2")):
        cache, out = tmp_path / f"cache-{name}", tmp_path / f"results-{name}"
        result = runner.invoke(app, ["cv", data, *RUN, "--workers", workers, "--cache", str(cache),
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        runs[name] = cache, out
    (stored_cache, stored_out), (stream_cache, stream_out) = runs["stored"], runs["streamed"]
    crops = _files(stored_cache, "*.npy")
    assert len([n for n in crops if n.startswith("inputs-")]) == 2  # one array per CR
    assert len(crops) == 2 + 20 * 4 * 2  # 20 studies, 4 views, 2 CRs
    assert _files(stream_cache, "*.npy") == crops
    for name in ("results.csv", "predictions.csv", "findings.csv"):
        assert (stream_out / name).read_text() == (stored_out / name).read_text(), name
    home = _home(stream_cache)
    assert (home / "labels.csv").read_text() == (stored / "labels.csv").read_text()
    assert (home / "phantom.json").read_text() == (stored / "phantom.json").read_text()
    stored_masks = sorted((stored / "masks").rglob("*.png"))
    assert len(stored_masks) == 80
    for mask in stored_masks:
        streamed_mask = home / mask.relative_to(stored)
        assert np.array_equal(np.asarray(Image.open(streamed_mask)), np.asarray(Image.open(mask)))
    assert not list(stream_cache.rglob("*.dcm")) and not (home / "dicom").exists()
    assert json.loads((stream_out / "results.json").read_text())["meta"]["data"] == SPEC


def test_a_stream_shares_the_stored_cohorts_cache(stored: Path, tmp_path: Path) -> None:
    """Streamed into the stored cohort's own cache (the default for its phantom.json), a cohort
    finds every crop there: keyed by the same UIDs, none is computed again."""
    cache = tmp_path / "cache"
    p = Preprocessing()
    from dicomcr.data.cache import view_crops

    files = view_crops(read_phantom_labels(stored), [1.0, 20.0], p, cache)
    stamps = {f: f.stat().st_mtime_ns for crops in files.values() for f in crops.values()}
    data = open_data(stored / "phantom.json")
    assert data.cache == stored / ".dicomcr-cache" and isinstance(data.source, StreamedCohort)
    breasts = data.source.stream([1.0, 20.0], p, cache)
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # nothing written again
    assert len(list(cache.glob("*.npy"))) == len(stamps)
    again = view_crops(breasts, [1.0, 20.0], p, cache)
    assert sorted(f for crops in again.values() for f in crops.values()) == sorted(stamps)
    assert [b.key for b in breasts] == [b.key for b in read_phantom_labels(stored)]


def test_a_killed_stream_resumes_without_generating_finished_studies(tmp_path: Path) -> None:
    """SIGKILL mid-stream; the rerun generates only the studies without a record, and the
    result equals an undisturbed stream's."""
    spec, cache = "phantom:studies=8,seed=3,size=small,vendor=ge", tmp_path / "cache"
    script = (f"from dicomcr.experiments.run import open_data; from dicomcr.data.preprocess import "
              f"Preprocessing; open_data({spec!r}).source.stream([1.0, 20.0], Preprocessing(), "
              f"{str(cache)!r})")
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    studies = cache / f"phantom-{CohortSpec.parse(spec).key}" / "studies"
    deadline = time.monotonic() + 120
    while len(list(studies.glob("*.json"))) < 2 and child.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    finished = {p: p.stat().st_mtime_ns for p in studies.glob("*.json")}
    assert 2 <= len(finished) < 8
    views: list[tuple[int, int]] = []
    stream = open_data(spec).source
    breasts = stream.stream([1.0, 20.0], Preprocessing(), cache,
                            progress=lambda done, total: views.append((done, total)))
    assert views[-1] == (4 * (8 - len(finished)),) * 2  # only the others were generated
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    fresh = stream.stream([1.0, 20.0], Preprocessing(), tmp_path / "fresh")
    assert [(b.key, b.malignant, b.headers) for b in breasts] == \
        [(b.key, b.malignant, b.headers) for b in fresh]
    assert _files(cache, "*.npy") == _files(tmp_path / "fresh", "*.npy")


def test_other_pixels_under_a_cached_uid_are_refused(tmp_path: Path) -> None:
    """Cohorts of one seed but other sizes give study i another finding: its views get other
    UIDs (the finding names them), so both share a cache without a clash; and a dataset that does
    give one UID to other pixels is refused in one line, not fed the first one's crops."""
    from dicomcr.data.cache import claim_image

    cache = tmp_path / "cache"
    first = CohortSpec.parse("phantom:studies=6,seed=1,size=small,vendor=ge")
    second = CohortSpec.parse("phantom:studies=9,seed=1,size=small,vendor=ge")
    assert first.findings() != second.findings()[:6]
    one = StreamedCohort(first).stream([1.0], Preprocessing(), cache)
    two = StreamedCohort(second).stream([1.0], Preprocessing(), cache)
    def uids(breasts) -> set[str]:
        return {h.sop_instance_uid for b in breasts for h in b.headers}

    same = sum(a == b for a, b in zip(first.findings(), second.findings()[:6], strict=True))
    assert len(uids(one) & uids(two)) == 4 * same  # the studies whose finding is the same
    claim_image("1.2.3", np.zeros((4, 4), np.uint16), cache)
    claim_image("1.2.3", np.zeros((4, 4), np.uint16), cache)  # the same pixels: fine
    with pytest.raises(ValueError, match="holds the crops of another image with SOP Instance UID"):
        claim_image("1.2.3", np.ones((4, 4), np.uint16), cache)


def test_the_reach_of_a_spec_is_that_of_its_views(tmp_path: Path) -> None:
    """CRs out of reach are known from the spec, as `cr_reach` finds them on the views' headers."""
    crs = [1.0, 1000.0, 5000.0, 11000.0]
    stream = StreamedCohort(CohortSpec.parse("phantom:studies=2,seed=0,size=small"))
    assert stream.reach(crs).kept == (1.0, 1000.0)  # a small GE view reaches 2143
    breasts = stream.stream([1.0], Preprocessing(), tmp_path)
    assert stream.reach(crs) == cr_reach(breasts, crs)
    assert StreamedCohort(CohortSpec.parse("phantom:studies=2,size=full")).reach(crs).kept == \
        tuple(crs)


def test_train_on_a_stream_is_train_on_the_stored_cohort(stored: Path, tmp_path: Path) -> None:
    models = []
    for name, data in (("stored", str(stored)), ("streamed", SPEC)):
        out = tmp_path / f"{name}.dcmcr"
        result = runner.invoke(app, ["train", data, "--cr", "20", "--epochs", "1", "--input-size",
                                     "64", "--cache", str(tmp_path / f"cache-{name}"), "--out",
                                     str(out)])
        assert result.exit_code == 0, result.output
        models.append(load_model(out))
    (stored_net, stored_info), (stream_net, stream_info) = models
    assert stream_info.validation == stored_info.validation
    assert stream_info.data_fingerprint == stored_info.data_fingerprint
    for (name, a), (_, b) in zip(stored_net.state_dict().items(), stream_net.state_dict().items(),
                                 strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), name


@pytest.mark.parametrize(("data", "said"), [
    ("phantom:seed=1", "the number of studies is missing"),
    ("phantom:studies=ten", "studies and seed are whole numbers"),
    ("phantom:studies=0", "the number of studies must be a positive integer, got 0"),
    ("phantom:studies=5,vendor=siemens", "unknown vendor 'siemens'; choose one of hologic, ge, mixed"),
    ("phantom:studies=5,size=huge", "unknown size 'huge'; choose one of full, small"),
    ("phantom:studies=5,difficulty=hard", "unknown difficulty 'hard'"),
    ("phantom:studies=5,mix=0.5/0.4", "mix is three shares"),
    ("phantom:studies=5,mix=0.5/0.4/0.3", "cohort mix must be non-negative and sum to 1"),
    ("phantom:studies=5,colour=red", "'colour=red' is not name=value with name one of studies"),
    ("phantom:studies=5,seed=1,seed=2", "each once"),
    ("missing/phantom.json", "cannot read missing/phantom.json"),
])
def test_a_bad_specification_is_one_line_and_exit_2(data: str, said: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["cv", data, "--out", str(tmp_path / "r"), "--cache",
                                 str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    said_lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(said_lines) == 1 and said_lines[0].startswith("error:"), result.output
    assert said in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "c").exists()


def test_bad_phantom_json_and_options_a_spec_does_not_take(tmp_path: Path) -> None:
    (tmp_path / "phantom.json").write_text('{"n_studies": 4}')
    for args, said in (([str(tmp_path / "phantom.json")], "is not a phantom cohort's phantom.json"),
                       ([SPEC, "--labels", str(tmp_path / "x.csv")], "takes no --format, --labels"),
                       ([SPEC, "--format", "rsna"], "takes no --format")):
        result = runner.invoke(app, ["train", *args, "--cr", "20", "--out", str(tmp_path / "m")])
        assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output


def test_too_few_patients_are_refused_before_any_study_is_made(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for command in (["cv", "phantom:studies=12,seed=5,size=small", "--folds", "2", "--out",
                     str(tmp_path / "r")],
                    ["train", "phantom:studies=4,size=small", "--cr", "20", "--out",
                     str(tmp_path / "m.dcmcr")]):
        result = runner.invoke(app, [*command, "--cache", str(cache)])
        assert result.exit_code == 2 and "too few patients" in result.output, result.output
        assert not cache.exists()
