"""The model observers in the audit (issue 22, part 3) and `dicomcr detectability` (part 1): a small
Hologic study transcoded at CR 5000 with `dicomcr transcode` is audited, and the verdict of each
finding type is stated in text, JSON and HTML; --fail-on lost / degraded-detectability; the US
(lossless-only) row on a lossless and a lossy site.

The observer runs are cached in one folder for the test session (`detectability_cache`, which
test_audit.py shares): each (vendor, CR) quick run is measured once (about 25 s for a Hologic CR
on 2 cores), then read.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomcr.audit.detectability import (
    CACHE_ENV,
    OBSERVER_NAMES,
    cache_folder,
    judged_cr,
    match_detector,
)
from dicomcr.audit.sites import run_audit
from dicomcr.audit.verdicts import DetectabilityMode, FailOn
from dicomcr.cli import app
from dicomcr.observers import FindingType, ObserverKind, Pitch, Verdict, load_results
from dicomcr.phantom import CohortSpec, write_cohort

runner = CliRunner()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, detectability_cache: Path) -> dict[str, Path]:
    """One small Hologic study transcoded by `dicomcr transcode` at CR 5000 (lossy) and lossless
    (each its own site folder)."""
    root = tmp_path_factory.mktemp("sites")
    write_cohort(CohortSpec(n_studies=1, seed=11, size="small", vendor="hologic"), root / "cohort",
                 workers=1)
    folders = {}
    for name, args in (("cr5000", ["--cr", "5000"]), ("lossless", ["--lossless"])):
        result = runner.invoke(app, ["transcode", str(root / "cohort" / "dicom"), str(root / name),
                                     *args, "--workers", "1"])
        assert result.exit_code == 0, result.output
        folders[name] = root / name
    return folders


def _words(text: str) -> str:
    return " ".join(text.split())


def _widest(output: str, folder: Path) -> int:
    """The widest line of `output`, but for lines naming a file under `folder` (the session's
    temporary folders): a path is printed whole, one piece to copy, however long it is."""
    return max(len(line) for line in output.splitlines() if str(folder) not in line)


def test_the_audit_states_each_finding_types_verdict_at_cr_5000(sites: Path, tmp_path: Path,
                                                                 detectability_cache: Path) -> None:
    out, page = tmp_path / "audit.json", tmp_path / "audit.html"
    result = runner.invoke(app, ["audit", str(sites["cr5000"]), "--json", str(out), "--html",
                                 str(page)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    site = json.loads(out.read_text())["sites"][0]
    assert site["detectability_note"] == ""
    [group] = site["detectability"]  # one phantom detector stands for the site's images
    assert (group["vendor"], group["cr"], group["quick"]) == ("hologic", 5000.0, True)
    assert group["highest_cr"] == pytest.approx(5000, rel=0.02)
    assert group["note"].startswith("HOLOGIC, Inc. 832 x 1024 at 0.28 mm: judged on the phantom's "
                                    "views of the Selenia Dimensions (3328 x 4096 at 0.07 mm)")
    findings = {f["finding"]: f for f in group["findings"]}
    assert set(findings) == {f.value for f in FindingType}  # every finding type, one size (quick)
    for f in group["findings"]:
        d = f["detector"]
        assert (d["pitch"], d["pitch_mm"], f["paper"]["pitch"]) == ("detector", 0.07, "paper")
        assert f["verdict"] == d["verdict"] in {v.value for v in Verdict}
        assert f" at CR 5000: {f['verdict']} (" in f["text"] and f["text"].startswith(
            FindingType(f["finding"]).label)
        assert d["delta_pct_low"] <= d["delta_pct"] <= d["delta_pct_high"]
    # CR 5000 takes more than half of what the best observer sees of a calcification cluster
    calcification = findings["calcification_cluster"]["detector"]
    assert calcification["verdict"] == "lost" and calcification["delta_pct_high"] < -50
    assert group["verdict"] == "lost"

    text = _words(result.output)  # the terminal: a table per site and detector, each finding
    assert "Detectability at cr5000: lost at CR 5000 (highest stored" in text
    for f in group["findings"]:  # its row at the detector's pitch (the name may wrap in its cell)
        d = f["detector"]
        a, b = (f"{v:.1f}".replace("-", "\u2212") for v in (d["dprime_cr1"], d["dprime"]))
        row = rf"0\.07 mm {OBSERVER_NAMES[ObserverKind(d['observer'])]} {a} \u2192 {b} \S+ % " \
              rf"\(\S+ to \S+\) {f['verdict']}"
        assert re.search(row, text), (row, text)
        assert all(word in text for word in FindingType(f["finding"]).label.split())
    assert _widest(result.output, tmp_path.parent) <= 80
    said = _words(html.unescape(re.sub(r"<[^>]+>", " ", page.read_text())))
    for f in group["findings"]:
        assert _words(f["text"]) in said
    assert "Detectability: lost at CR 5000" in said and "the observer that sees it best" in said

    # cached by geometry, revisions and CR: a second audit measures nothing, the same verdicts
    run = next(detectability_cache.glob("hologic-3328x4096-0.07mm-codec*-observers*/cr-5000-quick"))
    views = {v: v.stat().st_mtime_ns for v in (run / "views").glob("*.npz")}
    assert views
    again = run_audit([sites["cr5000"]])
    assert {v: v.stat().st_mtime_ns for v in (run / "views").glob("*.npz")} == views
    assert [f.text() for f in again.sites[0].detectability[0].findings] == [
        f["text"] for f in group["findings"]]


def test_fail_on_lost_and_degraded_detectability(sites: dict[str, Path]) -> None:
    for gate in ("lost", "degraded-detectability"):
        result = runner.invoke(app, ["audit", str(sites["cr5000"]), "--fail-on", gate])
        assert result.exit_code == 1, result.output
        assert f"--fail-on {gate}: cr5000: at CR 5000: calcification cluster" in _words(result.output)
        lossless = runner.invoke(app, ["audit", str(sites["lossless"]), "--fail-on", gate])
        assert lossless.exit_code == 0, lossless.output  # nothing lossy: nothing lost
        assert "no lossy image: nothing lost" in _words(lossless.output)
    off = runner.invoke(app, ["audit", str(sites["cr5000"]), "--fail-on", "lost",
                              "--detectability", "off"])
    assert off.exit_code == 2
    assert _words(off.output) == ("error: --fail-on lost judges detectability: not with "
                                  "--detectability off")
    # without the observers, the audit says so and fails no detectability gate
    audit = run_audit([sites["cr5000"]], detectability=DetectabilityMode.OFF)
    assert audit.sites[0].detectability == []
    assert audit.sites[0].detectability_note == "not measured (--detectability off)"
    assert not audit.fails(FailOn.LOST)


def test_the_us_row_judges_lossy_images_not_the_achieved_cr(sites: dict[str, Path]) -> None:
    """FDA (MQSA): lossless only. Lossless JPEG 2000 measures CR 2-3 and stays within; any lossy
    image is above, whatever its CR."""
    lossless = run_audit([sites["lossless"]], guideline="US",
                         detectability=DetectabilityMode.OFF).sites[0]
    assert 1.5 < lossless.achieved_summary[2] < 6  # lossless JPEG 2000 compresses too
    assert (lossless.guideline_status, lossless.guideline_text) == (
        "within", "no lossy image: within US lossless-only")
    lossy = run_audit([sites["cr5000"]], guideline="US", detectability=DetectabilityMode.OFF)
    assert (lossy.sites[0].guideline_status, lossy.sites[0].guideline_text) == (
        "violation", "lossy images: above US lossless-only")
    assert lossy.reasons(FailOn.VIOLATION) == [
        "cr5000: guideline violation (lossy images: above US lossless-only)"]
    every = run_audit([sites["lossless"]], detectability=DetectabilityMode.OFF).sites[0]
    assert every.guideline_status == "within" and every.guideline_text.endswith(
        "; no lossy image: within US lossless-only")
    assert "ESR" not in every.guideline_text  # a row without a ratio is shown, never judged


def test_the_detectability_command_runs_resumes_and_refuses(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["detectability", str(out), "--quick", "--vendor", "ge", "--cr", "5000", "--finding",
            "calcification_cluster", "--workers", "1"]
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    results = load_results(out)
    assert {(r.vendor, r.finding, r.cr) for r in results.rows} == {
        ("ge", FindingType.CALCIFICATION_CLUSTER, 1.0), ("ge", FindingType.CALCIFICATION_CLUSTER, 5000.0)}
    rows = [line for line in result.output.splitlines() if line.startswith("ge ")]
    assert len(rows) == 1 and "calcification cluster" in rows[0]  # then its CNN-pitch line
    assert _widest(result.output, tmp_path.parent) <= 80
    views = {p: p.stat().st_mtime_ns for p in (out / "views").iterdir()}
    again = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert again.exit_code == 0 and "view pairs" not in again.output  # no progress: nothing to do
    assert _words(again.output) in _words(result.output)  # the same table
    assert {p: p.stat().st_mtime_ns for p in (out / "views").iterdir()} == views  # nothing redone
    for bad, said in ((["--vendor", "acme"], "error: unknown vendor 'acme'; choose from hologic, ge"),
                      (["--finding", "cyst"], "error: unknown finding type 'cyst'; choose from "
                                              "calcification_cluster, spiculated_mass, circumscribed_mass")):
        refused = runner.invoke(app, ["detectability", str(tmp_path / "bad"), "--quick", *bad])
        assert refused.exit_code == 2 and _words(refused.output) == said, refused.output


def test_the_detector_standing_for_a_sites_images() -> None:
    exact = match_detector("HOLOGIC, Inc.", 4096, 3328, 0.07)
    assert (exact.vendor, exact.note) == ("hologic", "")
    small = match_detector("GE MEDICAL SYSTEMS", 574, 478, 0.4)
    assert small.vendor == "ge" and small.note == (
        "GE MEDICAL SYSTEMS 478 x 574 at 0.4 mm: judged on the phantom's views of the Senographe "
        "DS (1914 x 2294 at 0.1 mm)")
    unknown = match_detector("ACME Imaging", 2816, 3584, 0.075)  # nearest by pixel spacing
    assert unknown.vendor == "hologic" and "an unknown manufacturer, judged on the nearest" in unknown.note
    assert match_detector("", 2294, 1914, 0.1).vendor == "ge"
    assert [judged_cr(c) for c in (4953.3, 100.5, 20.1, 11751, 15.2)] == [5000, 100, 20, 12000, 15]


def test_the_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "dicomcr" / "detectability"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_folder() == tmp_path / "env"
    assert cache_folder(tmp_path / "given") == tmp_path / "given"


def test_the_verdict_reads_the_best_observer_at_each_pitch() -> None:
    """From the committed full run: per finding and pitch, the observer with the highest CR-1 d'
    (CHO-DoG for the smallest Hologic cluster), and its verdict by the rule."""
    from dicomcr.audit.detectability import finding_verdicts
    from dicomcr.observers import verdict

    results = load_results(Path(__file__).resolve().parents[1] / "docs/experiments/detectability")
    rows = [r for r in results.rows if r.vendor == "hologic"]
    verdicts = {(v.finding, v.size_mm, v.cr): v for v in finding_verdicts(rows)}
    v = verdicts[(FindingType.CALCIFICATION_CLUSTER, 0.23, 1000.0)]
    mine = [r for r in rows if (r.finding, r.size_mm, r.cr, r.pitch) == (
        FindingType.CALCIFICATION_CLUSTER, 0.23, 1000.0, Pitch.DETECTOR)]
    best = max(mine, key=lambda r: r.dprime_cr1)
    assert (v.detector.observer, v.detector.dprime) == (best.observer, best.dprime)
    assert v.verdict == verdict(best) == Verdict.LOST and v.paper.pitch is Pitch.PAPER
    assert v.text().startswith("calcification cluster 0.23 mm: d\u2032 3.1 \u2192 ")
