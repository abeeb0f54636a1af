"""The audit as JSON, and as one HTML page with a plot per site (images inline, no network)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .audit import Guideline, SiteAudit


def to_json(audits: list[SiteAudit], problems: list[str], guidelines: list[Guideline]) -> dict:
    sites = []
    for audit in audits:
        item = asdict(audit)
        item["achieved_crs"] = item.pop("achieved")
        summary = audit.achieved_summary
        item["achieved"] = (dict(zip(("min", "median", "max"), summary, strict=True))
                            if summary else None)
        sites.append(item)
    return {"sites": sites, "problems": problems, "guidelines": [asdict(g) for g in guidelines]}


def terminal_table(audits: list[SiteAudit], title: str = "Compression audit"):
    """The audit as a rich table: one row per site, verdicts in colour."""
    from rich.table import Table

    view = Table(title=title)
    for name in ("site", "images (studies)", "CR configured", "CR achieved min/median/max",
                 "syntaxes", "rule breaks", "guidelines", "model at the site's CR"):
        view.add_column(name, overflow="fold")
    for a in audits:
        summary = a.achieved_summary
        verdict = a.model
        model_text = verdict.status if verdict else "-"
        if verdict and verdict.at_site and verdict.at_cr1:
            model_text += (f": AUROC {verdict.at_site['auroc']:.3f} at CR "
                           f"{verdict.at_site['test_cr']:g} vs {verdict.at_cr1['auroc']:.3f} at 1")
        elif verdict and verdict.note:
            model_text += f" ({verdict.note})"
        colour = "red" if a.guideline_status == "violation" or a.breaks else "green"
        view.add_row(a.site, f"{a.images} ({a.studies})", a.configured_cr or "-",
                     " / ".join(f"{v:.1f}" for v in summary) if summary else "-",
                     ", ".join(f"{k} ({v})" for k, v in sorted(a.syntaxes.items())),
                     f"[{colour}]{len(a.breaks)}[/]" + (f", {len(a.unreadable)} unreadable"
                                                        if a.unreadable else ""),
                     f"[{colour}]{a.guideline_status or '-'}[/] {a.guideline_text}", model_text)
    return view


def _plot(audit: SiteAudit, guidelines: list[Guideline]) -> str:
    """Achieved-CR distribution against the guidelines; the model's AUROC against the CR."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    if audit.achieved:
        values = np.asarray(audit.achieved)
        bins = np.logspace(0, np.log10(max(values.max(), 30) * 1.2), 40)
        left.hist(values, bins=bins, color="#4477aa")
        left.set_xscale("log")
    for g in guidelines:
        left.axvline(g.max_cr, color="#cc3311", ls="--", lw=1)
        left.text(g.max_cr, left.get_ylim()[1] * 0.95, f" {g.key} {g.max_cr:g}", fontsize=7,
                  color="#cc3311", va="top")
    left.set(xlabel="achieved CR (log)", ylabel="images", title=f"{audit.site}: achieved CR")
    verdict = audit.model
    if verdict and verdict.curve:
        crs = [r["test_cr"] for r in verdict.curve]
        right.plot(crs, [r["auroc"] for r in verdict.curve], marker="o", color="#228833")
        right.fill_between(crs, [r["auroc_low"] for r in verdict.curve],
                           [r["auroc_high"] for r in verdict.curve], color="#228833", alpha=0.15)
        if verdict.site_cr:
            right.axvline(verdict.site_cr, color="#4477aa", lw=1)
        right.set_xscale("log")
        right.set(xlabel="test CR (log)", ylabel="AUROC (95% CI)",
                  title=f"{verdict.model}: {verdict.status}")
    else:
        right.text(0.5, 0.5, "no cross-CR results for this site's model", ha="center",
                   va="center", transform=right.transAxes)
        right.set_axis_off()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_html(audits: list[SiteAudit], problems: list[str], guidelines: list[Guideline],
               path: Path) -> None:
    esc = html.escape
    parts = ["<h1>dicomcr compression audit</h1>",
             "<table><tr><th>site</th><th>images</th><th>studies</th><th>configured CR</th>"
             "<th>achieved CR min / median / max</th><th>guidelines</th><th>rule breaks</th>"
             "<th>model</th></tr>"]
    for a in audits:
        summary = a.achieved_summary
        achieved = " / ".join(f"{v:.1f}" for v in summary) if summary else "-"
        model = a.model.status if a.model else "-"
        parts.append(f"<tr><td>{esc(a.site)}</td><td>{a.images}</td><td>{a.studies}</td>"
                     f"<td>{esc(str(a.configured_cr or '-'))}</td><td>{achieved}</td>"
                     f"<td>{esc(a.guideline_status)}: {esc(a.guideline_text)}</td>"
                     f"<td>{len(a.breaks)}</td><td>{esc(model)}</td></tr>")
    parts.append("</table>")
    for a in audits:
        parts.append(f"<h2>{esc(a.site)}</h2>")
        parts.append(f'<img alt="{esc(a.site)}" src="data:image/png;base64,{_plot(a, guidelines)}">')
        if a.model and a.model.at_site and a.model.at_cr1:
            s, o = a.model.at_site, a.model.at_cr1
            parts.append(f"<p>{esc(a.model.model)} at CR {s['test_cr']:g}: AUROC {s['auroc']:.3f} "
                         f"({s['auroc_low']:.3f}-{s['auroc_high']:.3f}), AUPRC {s['auprc']:.3f} "
                         f"({s['auprc_low']:.3f}-{s['auprc_high']:.3f}); at CR 1: AUROC "
                         f"{o['auroc']:.3f} ({o['auroc_low']:.3f}-{o['auroc_high']:.3f}).</p>")
        elif a.model and a.model.note:
            parts.append(f"<p>Model: {esc(a.model.status)} ({esc(a.model.note)})</p>")
        parts.append("<p>Transfer syntaxes: " + ", ".join(
            f"{esc(k)} ({v})" for k, v in sorted(a.syntaxes.items())) + "</p>")
        if a.histories:
            parts.append("<p>Lossy histories (0028,2112): " + ", ".join(
                f"{esc(k)} ({v})" for k, v in sorted(a.histories.items())) + "</p>")
        for file, what in a.breaks[:50] + a.unreadable[:50]:
            parts.append(f"<p><code>{esc(file)}</code>: {esc(what)}</p>")
    if problems:
        parts.append("<h2>Problems</h2>" + "".join(f"<p>{esc(p)}</p>" for p in problems))
    parts.append("<h2>Guidelines</h2><table><tr><th>key</th><th>body</th><th>max CR</th>"
                 "<th>source</th></tr>" + "".join(
                     f"<tr><td>{esc(g.key)}</td><td>{esc(g.body)}</td><td>{g.max_cr:g}</td>"
                     f"<td>{esc(g.source)}</td></tr>" for g in guidelines) + "</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}")
    Path(path).write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>dicomcr audit"
                          f"</title><style>{style}</style></head><body>{''.join(parts)}"
                          "</body></html>")
