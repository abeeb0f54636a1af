"""`dicomcr report` for any results folder: a cv run's page (`experiments.report.write_report`), or
a detectability run's (`detectability_page`): the method in two sentences, the figures, and the
verdict of each finding x size x pitch at each CR. It lives above the observers (the verdicts are
theirs); the cv page lives below them, in experiments, and lends its HTML parts.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..codec.j2k import cr_short
from ..experiments.report import REPORT, ReportError, html_image, html_table, write_page, write_report
from ..observers import DetectabilityError, DetectabilityResults, Pitch, load_results
from ..observers.results import FIGURES
from ..phantom.params import DETECTORS
from .detectability import Reading, by_line, results_verdicts, rule_text

VERDICT_COLOURS = {"kept": "#1a7f37", "degraded": "#a15c00", "lost": "#b00020", "not seen": "#777"}
PITCH_NAMES = {Pitch.DETECTOR: "detector", Pitch.PAPER: "CNN (30 %)"}


def is_detectability(root: Path) -> bool:
    """Whether `root` holds a detectability run's results.json (it names its spec; cv's does not)."""
    try:
        document = json.loads((Path(root) / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and isinstance(document.get("spec"), dict)


def _cell(reading: Reading) -> str:
    colour = VERDICT_COLOURS.get(reading.verdict.value, "#222")
    return (f"{html.escape(reading.percent)}<br>"
            f"<small style='color:{colour}'>{html.escape(reading.verdict.value)}</small>")


def method(results: DetectabilityResults) -> str:
    """The method in two sentences, with this run's numbers, and the verdict rule."""
    spec = results.spec
    vendors = " and ".join(DETECTORS[v].model_name for v in spec.vendors)
    return (f"Lesions of each finding type were inserted at known positions into full-size phantom "
            f"views of the {vendors}, each paired with the same view without them, and the whole "
            f"view went through the product's exact-CR JPEG 2000 encoder and decoder at each CR; "
            f"ROIs at the detector's pitch and at the paper's 30 % pitch (the CNN's input) were "
            f"read by a CHO on Laguerre-Gauss channels, a CHO on difference-of-Gaussians channels "
            f"and the NPWE, trained and tested on disjoint pairs ({spec.pairs} pairs per finding, "
            f"size and vendor, {spec.splits} splits). d\u2032 and AUC carry 95 % BCa bootstrap CIs "
            f"over pairs, each CR's change is the paired "
            f"difference against CR 1 on the same ROIs, and each finding and pitch is read by the "
            f"observer that sees it best uncompressed (the highest CR-1 d\u2032): {rule_text()}.")


def detectability_page(results: DetectabilityResults) -> list[str]:
    """The page's parts: the method, the figures, the verdicts per vendor (finding x size x pitch
    by CR: the change of d' against CR 1 and its verdict)."""
    root = results.folder
    parts = ["<h1>dicomcr detectability: what each CR takes away, per finding type</h1>",
             f"<p>{html.escape(method(results))}</p>"]
    titles = {FIGURES[0]: "d\u2032 against CR per finding and pitch, beside the paper's CNN3 AUROC",
              FIGURES[1]: "Example ROIs at every CR"}
    for name, title in titles.items():
        if (root / name).exists():
            parts += [f"<h2>{html.escape(title)}</h2>", html_image(root / name, title)]
    for vendor, verdicts in results_verdicts(results).items():
        crs = sorted({v.cr for v in verdicts})
        body = []
        for (name, pitch), by_cr in by_line(verdicts).items():
            first = next(iter(by_cr.values()))
            body.append([html.escape(name), f"{PITCH_NAMES[pitch]} {first.pitch_mm:.2g} mm",
                         first.observer_name, f"{first.dprime_cr1:.2f}",
                         *(_cell(by_cr[cr]) if cr in by_cr else "" for cr in crs)])
        parts += [f"<h2>{html.escape(DETECTORS[vendor].model_name)}: the change of d\u2032 against "
                  "CR 1 (paired, same ROIs) and its verdict</h2>",
                  html_table(["finding", "pitch", "observer", "d\u2032 at CR 1",
                              *(f"CR {cr_short(cr)}" for cr in crs)], body)]
    parts += ["<h2>Parameters</h2>", "<pre>" + html.escape(json.dumps(
        {"spec": results.spec.as_dict(), "meta": results.meta}, indent=1, default=str)) + "</pre>",
              "<p><small>Written by dicomcr report. The phantom is not patient data; research use "
              "only, not a medical device.</small></p>"]
    return parts


def write_results_report(root: Path, target: Path | None = None) -> Path:
    """The `dicomcr report` page of the results folder `root` (cv or detectability) in `target`,
    default ROOT/report.html; returns where. ReportError when it cannot be reported."""
    root = Path(root)
    target = Path(target) if target is not None else root / REPORT
    if not is_detectability(root):
        write_report(root, target)
        return target
    try:
        results = load_results(root)
    except DetectabilityError as exc:
        raise ReportError(str(exc)) from None
    write_page(target, "dicomcr detectability report", detectability_page(results))
    return target
