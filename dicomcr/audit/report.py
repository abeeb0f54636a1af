"""The audit as JSON, as a terminal view and as one HTML page with a plot per site (images inline,
no network)."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..codec.j2k import cr_short
from ..observers import Verdict
from .audit import Guideline, ModelVerdict, SiteAudit
from .detectability import DetectabilityVerdict, rule_text
from .verdicts import GuidelineLimit, GuidelineStatus, ModelStatus

VERDICT_COLOURS = {Verdict.KEPT: "green", Verdict.DEGRADED: "yellow", Verdict.LOST: "red",
                   Verdict.NOT_SEEN: "dim"}


def to_json(audits: list[SiteAudit], problems: list[str], guidelines: list[Guideline]) -> dict:
    """Every site's audit (its achieved CRs as a list, and as min / median / max; each
    detectability verdict with its findings' verdicts and sentences), the problems and the
    guideline table, as plain JSON values."""
    sites = []
    for audit in audits:
        item = asdict(audit)
        item["achieved_crs"] = item.pop("achieved")
        summary = audit.achieved_summary
        item["achieved"] = (dict(zip(("min", "median", "max"), summary, strict=True))
                            if summary else None)
        for group, out in zip(audit.detectability, item["detectability"], strict=True):
            out["verdict"] = group.verdict
            for finding, said in zip(group.findings, out["findings"], strict=True):
                said.update(verdict=finding.verdict, text=finding.text())
        sites.append(item)
    return {"sites": sites, "problems": problems, "detectability_rule": rule_text(),
            "guidelines": [{**asdict(g), "judged": g.judged} for g in guidelines]}


def write_json(audits: list[SiteAudit], problems: list[str], guidelines: list[Guideline],
               path: Path) -> None:
    """The audit as one JSON document (`to_json`)."""
    Path(path).write_text(json.dumps(to_json(audits, problems, guidelines), indent=1, default=str))


# Short names of the transfer syntaxes an archive holds (pydicom's names are long).
SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "Implicit VR LE",
    "1.2.840.10008.1.2.1": "Explicit VR LE",
    "1.2.840.10008.1.2.1.99": "Deflated LE",
    "1.2.840.10008.1.2.2": "Explicit VR BE",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.92": "JPEG 2000 MC lossless",
    "1.2.840.10008.1.2.4.93": "JPEG 2000 MC",
    "1.2.840.10008.1.2.4.201": "HTJ2K lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K RPCL lossless",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.5": "RLE",
}


def syntax_name(uid: str) -> str:
    """A transfer syntax by a short name ("JPEG 2000"); pydicom's name, else the UID itself."""
    from pydicom.uid import UID

    return SYNTAX_NAMES.get(uid) or UID(uid).name


def model_text(verdict: ModelVerdict | None) -> str:
    """A model verdict in one sentence: status, and the AUROC at the site's CR against CR 1."""
    if verdict is None:
        return "-"
    if verdict.at_site and verdict.at_cr1:
        s, o = verdict.at_site, verdict.at_cr1
        return (f"{verdict.status}: {verdict.model} AUROC {s['auroc']:.3f} (95% CI "
                f"{s['auroc_low']:.3f}-{s['auroc_high']:.3f}) at CR {s['test_cr']:g} vs "
                f"{o['auroc']:.3f} ({o['auroc_low']:.3f}-{o['auroc_high']:.3f}) at CR 1"
                + (f"; {verdict.note}" if verdict.note else ""))
    return f"{verdict.status} ({verdict.note})" if verdict.note else verdict.status


class AuditView:
    """The audit for a terminal or a log: a table of what each site stores and one of its
    verdicts when both fit the width without breaking a word or a number, else one block of
    lines per site (narrow consoles, long site names). Never wider than the console."""

    def __init__(self, audits: list[SiteAudit], title: str) -> None:
        self.audits, self.title = audits, title

    @staticmethod
    def _verdict(verdict: Verdict | None, text: str = ""):
        from rich.text import Text

        return Text(text or str(verdict or "-"), VERDICT_COLOURS.get(verdict, ""))

    def detectability_tables(self) -> list:
        """One table per site and phantom detector: each finding's reading at the detector's
        pitch (the verdict) and at the CNN's, by the observer that sees it best uncompressed."""
        from rich import box
        from rich.table import Table

        tables = []
        for a in self.audits:
            for g in a.detectability:
                table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                              padding=(0, 1, 0, 0), title_justify="left", caption_justify="left",
                              title=f"Detectability at {a.site}: {g.headline()}",
                              caption=g.note or None)
                table.add_column("finding")
                for name in ("pitch", "observer", f"d\u2032 CR 1\n\u2192 {cr_short(g.cr)}",
                             "change % (95% CI)", "verdict"):
                    table.add_column(name, no_wrap=True)
                for f in g.findings:
                    for number, r in enumerate(f.readings):
                        table.add_row(f.name if number == 0 else "",
                                      f"{'CNN ' if number else ''}{r.pitch_mm:.2g} mm",
                                      r.observer_name, r.dprimes, r.change,
                                      self._verdict(r.verdict))
                tables.append(table)
        return tables

    def _detectability_lines(self, a: SiteAudit) -> list[tuple[str, object]]:
        if not a.detectability:
            return [("detectability", a.detectability_note or "-")]
        lines = []
        for g in a.detectability:
            lines.append(("detectability", self._verdict(g.verdict, g.headline())))
            lines += [("", f.text()) for f in g.findings]
            if g.note:
                lines.append(("", g.note))
        return lines

    def _cells(self, a: SiteAudit) -> dict[str, object]:
        from rich.text import Text

        summary = a.achieved_summary
        syntaxes = sorted(a.syntaxes.items(), key=lambda kv: (-kv[1], kv[0]))
        breaks = Text(str(len(a.breaks)), "red" if a.breaks else "green")
        if a.unreadable:
            breaks.append(f", {len(a.unreadable)} unreadable")
        guidelines = Text(a.guideline_status or "-",
                          "red" if a.guideline_status == GuidelineStatus.VIOLATION else "green")
        if a.guideline_text:
            guidelines.append(f": {a.guideline_text}")
        model = Text(model_text(a.model))
        if a.model is not None:
            colour = {ModelStatus.OK: "green", ModelStatus.DEGRADED: "red"}
            model.stylize(colour.get(a.model.status, "yellow"), 0, len(a.model.status))
        return {"images": f"{a.images} ({a.studies})", "set": a.configured_cr or "-",
                "achieved": " / ".join(f"{v:.1f}" for v in summary) if summary else "-",
                "syntaxes": ", ".join(f"{syntax_name(k)} ({v})" for k, v in syntaxes) or "-",
                "breaks": breaks, "guidelines": guidelines, "model": model}

    def tables(self) -> tuple:
        """(what each site stores, its verdicts): two rich tables."""
        from rich import box
        from rich.table import Table

        def table(**kwargs) -> Table:
            return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                         padding=(0, 1, 0, 0), **kwargs)

        facts, verdicts = table(title=self.title), table()
        for name in ("site", "images\n(studies)", "CR set", "CR achieved\nmin / med / max"):
            facts.add_column(name, no_wrap=True)
        facts.add_column("syntaxes")
        facts.add_column("rule\nbreaks")
        verdicts.add_column("site", no_wrap=True)
        verdicts.add_column("guidelines")
        verdicts.add_column("model at the site's CR")
        for a in self.audits:
            c = self._cells(a)
            facts.add_row(a.site, c["images"], c["set"], c["achieved"], c["syntaxes"], c["breaks"])
            verdicts.add_row(a.site, c["guidelines"], c["model"])
        return facts, verdicts

    def blocks(self):
        """One block of labelled lines per site, for consoles too narrow for the tables."""
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        grid.title = self.title
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column()
        for a in self.audits:
            c = self._cells(a)
            lines = [("images (studies)", f"{c['images']}, CR set: {c['set']}"),
                     ("CR achieved min / med / max", c["achieved"]),
                     ("syntaxes", c["syntaxes"]), ("rule breaks", c["breaks"]),
                     ("guidelines", c["guidelines"]), ("model", c["model"]),
                     *(self._detectability_lines(a) if a.detectability or a.detectability_note
                       else [])]
            for number, (label, value) in enumerate(lines):
                grid.add_row(a.site if number == 0 else "", Text.assemble(
                    (f"{label}: " if label else "  ", "dim"), value))
        return grid

    @staticmethod
    def _narrowest(console, options, table) -> int:
        """The width `table` needs to break no word, and nothing at all in a no_wrap column."""
        from rich.measure import Measurement

        widths = []
        for column in table.columns:
            sizes = [Measurement.get(console, options, cell) for cell in
                     (column.header, *column.cells)]
            widths.append(max(m.maximum if column.no_wrap else m.minimum for m in sizes))
        return sum(widths) + 2 * (len(widths) - 1)  # a separator and a padding between columns

    def __rich_console__(self, console, options):
        from rich.text import Text

        tables = [*self.tables(), *self.detectability_tables()]
        if all(self._narrowest(console, options, t) <= options.max_width for t in tables):
            for number, table in enumerate(tables):
                if number:
                    yield ""
                yield table
            for a in self.audits:
                if a.detectability_note and not a.detectability:
                    yield Text(f"Detectability at {a.site}: {a.detectability_note}")
        else:
            yield self.blocks()


def file_lines(audits: list[SiteAudit], limit: int = 20) -> list[str]:
    """"site: file: what" for the first `limit` rule breaks and unreadable files of each site."""
    return [f"{a.site}: {file}: {what}" for a in audits for file, what in
            [*a.breaks[:limit], *((f, f"unreadable: {why}") for f, why in a.unreadable[:limit])]]


def terminal_table(audits: list[SiteAudit], title: str = "Compression audit") -> AuditView:
    """The audit as a rich renderable, readable at 80 columns (see AuditView)."""
    return AuditView(audits, title)


def _plot(audit: SiteAudit, guidelines: list[Guideline]) -> str:
    """Achieved-CR distribution against the guidelines; the model's AUROC against the CR."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    if audit.achieved:
        values = np.asarray(audit.achieved)
        bins = np.logspace(0, np.log10(max(values.max(), 30) * 1.2), 40)
        left.hist(values, bins=bins, color="#4477aa")
        left.set_xscale("log")
    for g in (g for g in guidelines if g.limit is GuidelineLimit.RATIO):
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


def _detectability_html(audit: SiteAudit) -> list[str]:
    """A site's detectability: per phantom detector, its headline, each finding's sentence."""
    esc = html.escape
    if not audit.detectability:
        return [f"<p>Detectability: {esc(audit.detectability_note or '-')}</p>"]
    parts = []
    for g in audit.detectability:
        parts.append(f"<h3>Detectability: {esc(g.headline())}</h3>")
        if g.note:
            parts.append(f"<p>{esc(g.note)}</p>")
        parts.append("<ul>" + "".join(
            f'<li class="{esc(f.verdict.value.replace(" ", "-"))}">{esc(f.text())}</li>'
            for f in g.findings) + "</ul>")
    return parts


def _detectability_cell(groups: list[DetectabilityVerdict], note: str) -> str:
    return "; ".join(f"{(g.error and 'not judged') or g.verdict or '-'} at CR {g.cr:g}"
                     for g in groups) or note or "-"


def _guideline_rows(guidelines: list[Guideline]) -> str:
    esc = html.escape
    limit = {GuidelineLimit.RATIO: lambda g: f"{g.max_cr:g}",
             GuidelineLimit.LOSSLESS_ONLY: lambda g: "lossless only",
             GuidelineLimit.NO_RATIO: lambda g: "no ratio (shown, not judged)"}
    return "".join(f"<tr><td>{esc(g.key)}</td><td>{esc(g.body)}</td><td>{esc(limit[g.limit](g))}"
                   f"</td><td>{esc(g.method)}</td><td>{esc(g.evidence)}</td><td>{esc(g.source)}"
                   f"</td><td>{esc(g.note)}</td></tr>" for g in guidelines)


def write_html(audits: list[SiteAudit], problems: list[str], guidelines: list[Guideline],
               path: Path) -> None:
    """The audit as one HTML page: a summary table, a section per site (its plots, its model and
    detectability verdicts, syntaxes, histories, rule breaks), the problems, the guidelines."""
    esc = html.escape
    parts = ["<h1>dicomcr compression audit</h1>",
             "<table><tr><th>site</th><th>images</th><th>studies</th><th>configured CR</th>"
             "<th>achieved CR min / median / max</th><th>guidelines</th><th>rule breaks</th>"
             "<th>model</th><th>detectability</th></tr>"]
    for a in audits:
        summary = a.achieved_summary
        achieved = " / ".join(f"{v:.1f}" for v in summary) if summary else "-"
        model = a.model.status if a.model else "-"
        parts.append(f"<tr><td>{esc(a.site)}</td><td>{a.images}</td><td>{a.studies}</td>"
                     f"<td>{esc(str(a.configured_cr or '-'))}</td><td>{achieved}</td>"
                     f"<td>{esc(a.guideline_status)}: {esc(a.guideline_text)}</td>"
                     f"<td>{len(a.breaks)}</td><td>{esc(model)}</td>"
                     f"<td>{esc(_detectability_cell(a.detectability, a.detectability_note))}</td>"
                     "</tr>")
    parts.append("</table>")
    for a in audits:
        parts.append(f"<h2>{esc(a.site)}</h2>")
        parts.append(f'<img alt="{esc(a.site)}" src="data:image/png;base64,{_plot(a, guidelines)}">')
        if a.model and a.model.at_site and a.model.at_cr1:
            s, o = a.model.at_site, a.model.at_cr1
            parts.append(f"<p>{esc(a.model.status)}: {esc(a.model.model)} at CR {s['test_cr']:g}: "
                         f"AUROC {s['auroc']:.3f} "
                         f"({s['auroc_low']:.3f}-{s['auroc_high']:.3f}), AUPRC {s['auprc']:.3f} "
                         f"({s['auprc_low']:.3f}-{s['auprc_high']:.3f}); at CR 1: AUROC "
                         f"{o['auroc']:.3f} ({o['auroc_low']:.3f}-{o['auroc_high']:.3f})"
                         + (f"; {esc(a.model.note)}" if a.model.note else "") + ".</p>")
        elif a.model and a.model.note:
            parts.append(f"<p>Model: {esc(a.model.status)} ({esc(a.model.note)})</p>")
        parts += _detectability_html(a)
        parts.append("<p>Transfer syntaxes: " + ", ".join(
            f"{esc(syntax_name(k))} ({v}, {esc(k)})" for k, v in sorted(a.syntaxes.items()))
                     + "</p>")
        if a.histories:
            parts.append("<p>Lossy histories (0028,2112): " + ", ".join(
                f"{esc(k)} ({v})" for k, v in sorted(a.histories.items())) + "</p>")
        for file, what in a.breaks[:50] + a.unreadable[:50]:
            parts.append(f"<p><code>{esc(file)}</code>: {esc(what)}</p>")
    if problems:
        parts.append("<h2>Problems</h2>" + "".join(f"<p>{esc(p)}</p>" for p in problems))
    if any(a.detectability for a in audits):
        parts.append("<h2>Detectability: the rule</h2><p>Model observers (CHO on Laguerre-Gauss and "
                     "on difference-of-Gaussians channels, NPWE) on signal-present/absent pairs of "
                     "phantom views of the site's detector, the whole view through the codec at the "
                     "site's highest CR; per finding, the observer that sees it best uncompressed. "
                     f"Verdict at the detector's pitch: {esc(rule_text())}.</p>")
    parts.append("<h2>Guidelines</h2><table><tr><th>key</th><th>body</th><th>limit (max CR)</th>"
                 "<th>method</th><th>evidence</th><th>source</th><th>note</th></tr>"
                 + _guideline_rows(guidelines) + "</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
             "li.lost{color:#b00}li.degraded{color:#a60}li.not-seen{color:#777}")
    Path(path).write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>dicomcr audit"
                          f"</title><style>{style}</style></head><body>{''.join(parts)}"
                          "</body></html>", encoding="utf-8")
