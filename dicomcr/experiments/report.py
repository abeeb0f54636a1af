"""The figures of a cv run, and one self-contained HTML page (images inline, no network); the
page's parts (`html_table`, `html_image`, `write_page`) serve the detectability page too
(`audit.pages`, above the observers).

`write_figures` draws from the result rows and fold predictions; `write_report` reads only what
`dicomcr cv` wrote (results.json and the PNGs), so a results folder can be reported anywhere. A
folder of `run.evaluate` (one model file tested once on a held-out test set, as the demo
writes) has the same form with one "fold": its page speaks of the held-out test set, not of folds.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ..codec.j2k import cr_short
from .cv import REFERENCE, FindingRow, FoldResult, ModelPlan, Row, pooled
from .figures import augment_figure, auroc_cr_figure, cross_heatmap, findings_figure, roc_pr_figure
from .paper import TABLE1_CNN3, TABLE2_MCR1

FIG2 = "fig2_roc_pr.png"
CROSS_AUROC = "table2_auroc.png"
CROSS_AUPRC = "table2_auprc.png"
FIG4 = "fig4_augment.png"
FINDINGS = "fig_findings.png"
AUROC_CR = "fig_auroc_cr.png"
FIGURES = (FIG2, CROSS_AUROC, CROSS_AUPRC, FIG4, FINDINGS, AUROC_CR)
REPORT = "report.html"  # where `dicomcr report` writes by default
OWN_CR = "M-CRx at its own CR"


class ReportError(ValueError):
    """A results folder that cannot be reported; the message says why."""


class Evaluation(StrEnum):
    """How the results were obtained: the folds of `dicomcr cv`, or one model file tested once on
    a held-out test set (`run.evaluate`)."""

    CROSS_VALIDATION = "cross-validation"
    HELD_OUT = "held-out test"

    @classmethod
    def of(cls, meta: dict) -> Evaluation:
        """A held-out results.json names the model file it tested (`model`); cv trains its own."""
        return cls.HELD_OUT if meta.get("model") else cls.CROSS_VALIDATION


@dataclass(frozen=True)
class Wording:
    """The words of a report that depend on the Evaluation."""

    design: str  # how the breasts were used, after "N breasts of P patients, M malignant; "
    table1: str  # the heading of Table 1, after "Table 1: "
    predictions: str  # what the metrics are computed on
    breasts: str  # the breasts the paired tests compare on
    pooled: str  # how the per-finding AUROCs were computed
    fold_spread: bool  # whether the fold mean ± sd columns mean anything


WORDING = {
    Evaluation.CROSS_VALIDATION: Wording(
        design="{folds} folds split by patient", table1="each model trained and tested at one CR",
        predictions="the pooled out-of-fold predictions",
        breasts="the same pooled out-of-fold breasts", pooled="pooled out of fold",
        fold_spread=True),
    Evaluation.HELD_OUT: Wording(
        design="the held-out test set, on which the model file <code>{model}</code> was tested "
               "once", table1="the model tested at the CR it was trained at",
        predictions="its predictions on the held-out test set",
        breasts="the same breasts of the held-out test set", pooled="on the held-out test set",
        fold_spread=False),
}


def _single(plans: list[ModelPlan]) -> list[ModelPlan]:
    return [p for p in plans if len(p.train_crs) == 1]


def finding_curves(findings: list[FindingRow]) -> dict[str, list[FindingRow]]:
    """The per-finding rows worth a line against the test CR: each single-CR model at its own CR
    (Table 1), and M-CR1 and the widest CR mixture when tested at more than one CR."""
    curves = {OWN_CR: [r for r in findings if r.train_crs == f"{r.test_cr:g}"]}
    mixtures = sorted({(r.train_crs.count(","), r.model) for r in findings if "," in r.train_crs})
    for name in (REFERENCE, *(mixtures[-1][1:] if mixtures else ())):
        mine = [r for r in findings if r.model == name]
        if len({r.test_cr for r in mine}) > 1:
            curves[f"{name} at every CR"] = mine
    return {name: rows for name, rows in curves.items() if rows}


def auroc_cr_panels(rows: list[Row], architecture: str = "cnn3"
                    ) -> dict[str, tuple[list[Row], tuple]]:
    """The AUROC-against-CR panels worth drawing: each single-CR model at its own CR (Table 1)
    when there are several, and M-CR1 at every test CR (Table 2's first row) when it was tested
    at several; each beside the paper's CNN3 values (none for another architecture)."""
    cnn3 = architecture == "cnn3"
    own = [r for r in rows if r.train_crs == f"{r.test_cr:g}"]
    reference = [r for r in rows if r.model == REFERENCE]
    panels = {}
    if len(own) > 1:
        panels[f"{OWN_CR} (Table 1)"] = (own, TABLE1_CNN3 if cnn3 else ())
    if len(reference) > 1:
        panels[f"{REFERENCE} at every test CR (Table 2)"] = (reference,
                                                             TABLE2_MCR1 if cnn3 else ())
    return panels


def write_figures(root: Path, plans: list[ModelPlan], rows: list[Row],
                  results: list[FoldResult], findings: list[FindingRow] | None = None,
                  architecture: str = "cnn3") -> list[Path]:
    """Fig. 2 always; Table 2's heat maps when single-CR models were tested at other CRs; Fig. 4
    when CR mixtures were trained; the per-finding AUROC against the test CR when the data carry
    finding types; AUROC against CR beside the paper's when there are several CRs. Returns the
    paths written."""
    written = []
    panels = auroc_cr_panels(rows, architecture)
    if panels:
        auroc_cr_figure(panels, root / AUROC_CR)
        written.append(root / AUROC_CR)
    curves = finding_curves(findings or [])
    if curves:
        findings_figure(curves, root / FINDINGS)
        written.append(root / FINDINGS)
    own = {p.name: next(r for r in rows if r.model == p.name and r.test_cr == p.train_crs[0])
           for p in _single(plans)}
    curves = {p.name: pooled(p, results, p.train_crs[0]) for p in _single(plans)}
    roc_pr_figure(curves, own, root / FIG2, "Each model trained and tested at one CR "
                                            "(pooled out-of-fold predictions)")
    written.append(root / FIG2)
    singles = {p.name for p in _single(plans)}
    cross_rows = [r for r in rows if r.model in singles]
    if len({r.test_cr for r in cross_rows}) > 1 and len(cross_rows) > len(singles):
        cross_heatmap(cross_rows, root / CROSS_AUROC, "auroc", "Table 2: AUROC, model x test CR")
        cross_heatmap(cross_rows, root / CROSS_AUPRC, "auprc", "Table 2: AUPRC, model x test CR")
        written += [root / CROSS_AUROC, root / CROSS_AUPRC]
    mixtures = [p for p in plans if len(p.train_crs) > 1]
    if mixtures:
        names = {p.name for p in mixtures} | {p.name for p in _single(plans)
                                              if p.train_crs == (1.0,)}
        augment_figure([r for r in rows if r.model in names], root / FIG4)
        written.append(root / FIG4)
    return written


def html_image(path: Path, alt: str) -> str:
    """A PNG inline, as a figure."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _ci(value: float, low: float, high: float) -> str:
    return f"{value:.3f} <small>({low:.3f}&ndash;{high:.3f})</small>"


def _diff(value: float | None, low: float | None, high: float | None, p: float | None) -> str:
    """A paired test's cell: the difference, its CI and p, in bold below 0.05; '' when none."""
    if value is None:
        return ""
    cell = (f"{value:+.3f} <small>({low:+.3f}&ndash;{high:+.3f})</small><br>"
            f"<small>p = {p:.2g}</small>")
    return f"<b>{cell}</b>" if p < 0.05 else cell


def _matrix(rows: list, cell) -> str:
    """Models (rows) by test CR (columns), `cell(row)` in each; models with no cell left out."""
    cells = {(r.model, r.test_cr): cell(r) for r in rows}
    crs = sorted({c for _, c in cells})
    models = [m for m in dict.fromkeys(r.model for r in rows)
              if any(cells.get((m, c)) for c in crs)]
    return html_table(["model \\ test CR", *(cr_short(c) for c in crs)],
                  [[html.escape(m), *(cells.get((m, c), "") for c in crs)] for m in models])


def _paired_section(rows: list[Row], words: Wording) -> list[str]:
    """DeLong's paired tests: against M-CR1 at CR 1, and against the model itself at test CR 1."""
    parts = ["<h2>Paired tests (DeLong, same breasts)</h2>",
             "<p>The AUROC difference with its 95% CI and the two-sided p-value of DeLong's paired "
             f"test on {words.breasts} (bold: p &lt; 0.05), where the paper "
             "compares overlapping intervals. Not corrected for multiple comparisons.</p>"]
    tests = (("vs_mcr1", f"this model at the test CR minus {REFERENCE} at CR 1 (the paper's "
                         "comparison: compressed training and test images against originals)"),
             ("vs_cr1", "this model at the test CR minus the same model at test CR 1 (what "
                        "compressing the test images costs it)"))
    shown = False
    for prefix, title in tests:
        if any(getattr(r, f"{prefix}_diff") is not None for r in rows):
            parts += [f"<h3>AUROC difference: {html.escape(title)}</h3>",
                      _matrix(rows, lambda r, x=prefix: _diff(
                          getattr(r, f"{x}_diff"), getattr(r, f"{x}_diff_low"),
                          getattr(r, f"{x}_diff_high"), getattr(r, f"{x}_p")))]
            shown = True
    if not shown:
        parts.append(f"<p>No paired test in these results: it needs {REFERENCE} (CR 1 among "
                     "the CRs) and at least one other model.</p>")
    return parts


def _findings_section(root: Path | None, findings: list[FindingRow], note: str,
                      words: Wording) -> list[str]:
    """The AUROC per malignant finding type, as a table and the figure in `root` (None: this
    run drew none), or why there is none."""
    parts = ["<h2>Per finding type: what compression erases</h2>"]
    if not findings:
        return [*parts, f"<p>{html.escape(note or 'no per-finding rows in these results')}</p>"]
    parts.append("<p>The AUROC (DeLong 95% CI) of the malignant breasts of each finding type "
                 f"against every non-malignant breast, {words.pooled}; in brackets the "
                 "malignant breasts of that type. Types with fewer than two are left out.</p>")
    crs = sorted({r.test_cr for r in findings})
    cells = {(r.model, r.finding, r.test_cr): _ci(r.auroc, r.auroc_low, r.auroc_high)
             for r in findings}
    lines = list(dict.fromkeys((r.model, r.finding, r.positives) for r in findings))
    parts.append(html_table(["model", "finding (malignant)", *(cr_short(c) for c in crs)],
                        [[html.escape(m), f"{html.escape(f)} ({n})",
                          *(cells.get((m, f, c), "") for c in crs)] for m, f, n in lines]))
    if root is not None:
        parts.append(html_image(root / FINDINGS, "AUROC per finding type against the test CR"))
    return parts


def _table1(own: list[Row], fold_spread: bool) -> str:
    """Each model at the CR it was trained at; the fold mean ± sd beside the pooled values when
    there were folds."""
    def spread(mean: float, sd: float) -> list[str]:
        return [f"{mean:.3f} ± {sd:.3f}"] if fold_spread else []

    header = ["model", "AUROC (95% CI)", *(["fold mean ± sd"] if fold_spread else []),
              "AUPRC (95% CI)", *(["fold mean ± sd"] if fold_spread else []), "breasts (malignant)"]
    return html_table(header, [[html.escape(r.model), _ci(r.auroc, r.auroc_low, r.auroc_high),
                            *spread(r.fold_auroc_mean, r.fold_auroc_sd),
                            _ci(r.auprc, r.auprc_low, r.auprc_high),
                            *spread(r.fold_auprc_mean, r.fold_auprc_sd),
                            f"{r.n} ({r.positives})"] for r in own])


def html_table(header: list[str], body: list[list[str]]) -> str:
    """A table: `header` escaped, `body`'s cells as given (HTML)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
img{max-width:100%}small{color:#666}code{background:#f4f4f4;padding:1px 4px}"""


def write_report(root: Path, target: Path) -> None:
    """RESULTS/results.json and its figures as one HTML file."""
    root = Path(root)
    try:
        document = json.loads((root / "results.json").read_text())
        meta, rows = document["meta"], [Row(**r) for r in document["rows"]]
        findings = [FindingRow(**r) for r in document.get("findings", [])]
    except FileNotFoundError as exc:
        raise ReportError(f"{root}: no results.json (is it a folder written by dicomcr cv?)"
                          ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{root / 'results.json'}: damaged ({exc})") from exc
    files = document.get("files")  # this run's files; None in folders written before it

    def drawn(name: str) -> bool:
        """The figure is this run's (a file another run left there is not shown)."""
        return (root / name).exists() and (files is None or name in files)

    own = [r for r in rows if r.train_crs == f"{r.test_cr:g}"]
    skipped = meta.get("crs_skipped") or []
    evaluation = Evaluation.of(meta)
    words = WORDING[evaluation]
    design = words.design.format(folds=meta.get("folds"), model=html.escape(str(meta.get("model"))))
    spread = "; fold mean &plusmn; sd beside them" if words.fold_spread else ""
    parts = [f"<h1>dicomcr {evaluation}: {html.escape(str(meta.get('architecture')))}</h1>",
             f"<p>Data <code>{html.escape(str(meta.get('data')))}</code> (fingerprint "
             f"{html.escape(str(meta.get('data_fingerprint')))}): {meta.get('breasts')} breasts of "
             f"{meta.get('patients')} patients, {meta.get('malignant')} malignant; "
             f"{design}. AUROC with DeLong's 95% CI and AUPRC "
             f"with a bootstrap 95% CI on {words.predictions}{spread}.</p>",
             *([f"<p>CR {html.escape(', '.join(f'{c:g}' for c in skipped))} skipped: out of "
                f"reach for some of these images ({html.escape(str(meta.get('views_reach')))})."
                "</p>"] if skipped else []),
             f"<h2>Table 1: {words.table1}</h2>",
             _table1(own, words.fold_spread)]
    if drawn(AUROC_CR):
        parts += ["<h2>AUROC against CR, beside the paper's</h2>",
                  html_image(root / AUROC_CR, "AUROC against CR beside the paper's")]
    if drawn(FIG2):
        parts += ["<h2>Figure 2: ROC and PR curves</h2>", html_image(root / FIG2, "ROC and PR")]
    crs = sorted({r.test_cr for r in rows})
    models = list(dict.fromkeys(r.model for r in rows))
    if len(rows) > len(own):
        for metric in ("auroc", "auprc"):
            cells = {(r.model, r.test_cr): _ci(getattr(r, metric), getattr(r, f"{metric}_low"),
                                               getattr(r, f"{metric}_high")) for r in rows}
            parts += [f"<h2>Table 2: {metric.upper()} of every model at every test CR</h2>",
                      html_table(["model \\ test CR", *(cr_short(c) for c in crs)],
                             [[html.escape(m), *(cells.get((m, c), "") for c in crs)]
                              for m in models])]
        for name, title in ((CROSS_AUROC, "Table 2 as a heat map (AUROC)"),
                            (CROSS_AUPRC, "Table 2 as a heat map (AUPRC)"),
                            (FIG4, "Figure 4: compression as augmentation")):
            if drawn(name):
                parts += [f"<h2>{title}</h2>", html_image(root / name, title)]
    parts += _paired_section(rows, words)
    parts += _findings_section(root if drawn(FINDINGS) else None, findings,
                               document.get("findings_note", ""), words)
    if document.get("saliency"):
        parts += ["<h2>Grad-CAM against the lesion masks</h2>",
                  "<p>Malignant breasts with a mask, each scored by its own fold's network at the "
                  "model's CR: the pointing game (the map's maximum on the lesion, Wilson 95% CI) "
                  "and the share of the map's energy inside the lesion.</p>",
                  html_table(["model", "breasts", "pointing game (95% CI)", "energy inside"],
                         [[html.escape(r["model"]), str(r["n"]),
                           _ci(r["pointing_rate"], r["pointing_low"], r["pointing_high"]),
                           f"{r['energy_mean']:.3f} ± {r['energy_sd']:.3f}"]
                          for r in document["saliency"]])]
    parts += ["<h2>Parameters</h2>",
              f"<pre>{html.escape(json.dumps(meta, indent=1, default=str))}</pre>",
              "<p><small>Written by dicomcr report. Research use only; not a medical device."
              "</small></p>"]
    title = "cv" if evaluation is Evaluation.CROSS_VALIDATION else evaluation.value
    write_page(target, f"dicomcr {title} report", parts)


def write_page(target: Path, title: str, parts: list[str]) -> None:
    """One self-contained HTML page of `parts` (the report's style, UTF-8)."""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
