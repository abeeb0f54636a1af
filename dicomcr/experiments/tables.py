"""The experiments' results as tables for a terminal or a log (rich renderables, readable at 80
columns): what a model file holds (`model_table`), what training did (`trained_table`), a model
tested at each CR (`tested_table`), and a cv run's tables (`cv_tables`); `facts`, a table of
labelled facts, for any command. The commands print them; a cv run's HTML page is `report`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..codec.j2k import cr_short

if TYPE_CHECKING:  # and imported where used: `facts` alone is read without torch
    from ..models.modelfile import ModelInfo
    from .cv import FindingRow, Row
    from .run import CVRun, TestedModel, TrainedModel


def facts(title: str, rows: list[tuple[str, str]]) -> Table:
    """A table of labelled facts: label, then the text (folded when longer than the line)."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _crs(crs: list[float]) -> str:
    return ", ".join(f"{c:g}" for c in crs)


def _input(preprocessing: dict) -> str:
    from ..data.preprocess import Preprocessing

    return Preprocessing.from_dict(preprocessing).input_text()


def model_table(path: Path, info: ModelInfo) -> Table:
    """What a model file holds: network, input, CRs, threshold, data, validation, versions."""
    v, auroc = info.validation, info.validation.get("val_auroc")
    spec = ", ".join(f"{k} {'/'.join(map(str, x)) if isinstance(x, list) else x}"
                     for k, x in sorted(info.spec.items()) if k != "input_size")
    validation = (f"AUROC {auroc:.3f}" if isinstance(auroc, float) and auroc == auroc else
                  "AUROC n/a", f"best epoch {v['best_epoch']}" if "best_epoch" in v else "",
                  f"cv fold {v['fold']}" if "fold" in v else "",
                  f"split {' / '.join(map(str, v['split']))} patients" if "split" in v else "")
    return facts(str(path), [
        ("network", f"{info.architecture} ({spec})"),
        ("input", _input(info.preprocessing)),
        ("trained at CR", _crs(info.trained_crs)),
        ("threshold", f"{info.threshold:.4f} ({v.get('threshold_rule', 'rule not recorded')})"),
        ("data fingerprint", info.data_fingerprint),
        ("validation", ", ".join(part for part in validation if part)),
        *((f"test AUROC at CR {key.removeprefix('test_auroc_cr')}",
           f"{value:.3f} (95% CI {low:.3f}-{high:.3f})")
          for key, (value, low, high) in sorted((k, x) for k, x in v.items()
                                                if k.startswith("test_auroc_cr"))),
        ("written by", ", ".join(f"{k} {x}" for k, x in sorted(info.versions.items())))])


def trained_table(trained: TrainedModel) -> Table:
    """What training did: split, input, best epoch, threshold, validation and test AUROC."""
    info = trained.info
    return facts(f"{info.architecture} trained at CR {_crs(info.trained_crs)}", [
        ("split (patients)", " / ".join(str(n) for n in trained.split)),
        ("input", _input(info.preprocessing)),
        ("best epoch", str(trained.best_epoch)),
        ("operating threshold", f"{trained.threshold:.4f} ({trained.threshold_rule})"),
        ("validation AUROC", f"{trained.validation_auroc:.3f}"),
        *((f"test AUROC at CR {c:g}", f"not computed ({e})" if isinstance(e, str) else
           f"{e.value:.3f} (95% CI {e.low:.3f}-{e.high:.3f})") for c, e in trained.test.items()),
        ("model file", str(trained.path))])


def tested_table(tested: TestedModel, data: str) -> Table:
    """AUROC and AUPRC, with their CIs, at each test CR (or why they were not computed)."""
    table = Table(title=f"{tested.model.name} (trained at CR {_crs(tested.info.trained_crs)}) "
                        f"on {len(tested.breasts)} breasts of {data}")
    for name in ("test CR", "AUROC (95% CI)", "AUPRC (95% CI)"):
        table.add_column(name)
    for c, metrics in tested.metrics.items():
        table.add_row(f"{c:g}", *((metrics, "") if isinstance(metrics, str) else map(str, metrics)))
    return table


def cv_tables(run: CVRun, every_cr: bool) -> Group:
    """Table 1 (each model at its own CR); with `every_cr` the AUROC of every model at every
    test CR; the paired tests against M-CR1; the AUROC per malignant finding type; the Grad-CAM
    scores when computed."""
    rows = run.rows
    table = Table(title="Table 1: each model trained and tested at one CR (pooled out-of-fold)")
    for name in ("model", "AUROC (95% CI)", "fold mean ± sd", "AUPRC (95% CI)", "fold mean ± sd"):
        table.add_column(name)
    for r in (r for r in rows if r.train_crs == f"{r.test_cr:g}"):
        table.add_row(r.model, f"{r.auroc:.3f} ({r.auroc_low:.3f}-{r.auroc_high:.3f})",
                      f"{r.fold_auroc_mean:.3f} ± {r.fold_auroc_sd:.3f}",
                      f"{r.auprc:.3f} ({r.auprc_low:.3f}-{r.auprc_high:.3f})",
                      f"{r.fold_auprc_mean:.3f} ± {r.fold_auprc_sd:.3f}")
    out: list[RenderableType] = [table]
    if every_cr:
        out += _matrix(rows, [p.name for p in run.plans])
    out += _paired(rows)
    out += _findings(run.findings) if run.findings else [Text(run.findings_note)]
    if run.saliency:
        table = Table(title="Grad-CAM against the lesion masks (malignant breasts, out of fold)")
        for name in ("model", "breasts", "pointing game (95% CI)", "energy inside (mean ± sd)"):
            table.add_column(name)
        for s in run.saliency:
            table.add_row(s.model, str(s.n), f"{s.pointing_rate:.2f} ({s.pointing_low:.2f}-"
                          f"{s.pointing_high:.2f})", f"{s.energy_mean:.3f} ± {s.energy_sd:.3f}")
        out.append(table)
    return Group(*out)


def _matrix(rows: list[Row], models: list[str]) -> list[RenderableType]:
    """The AUROC of every model (rows) at every test CR (columns)."""
    crs = sorted({r.test_cr for r in rows})
    matrix = Table()
    matrix.add_column("model")
    for c in crs:
        matrix.add_column(f"{c:g}", justify="right")
    for model in models:
        cells = {r.test_cr: f"{r.auroc:.3f}" for r in rows if r.model == model}
        matrix.add_row(model, *(cells.get(c, "") for c in crs))
    return [Text("AUROC of every model at every test CR (rows: model, columns: test CR)",
                 style="italic"), matrix]


def _compact(title: str, crs: list[float], first: str, rows: list[list[str]],
             width: int) -> list[RenderableType]:
    """A title line, then a table that reads at 80 columns: a label column and one narrow column
    (`width` characters) per test CR."""
    table = Table(box=None, padding=(0, 0), show_edge=False)
    table.add_column(first, no_wrap=True)
    for c in crs:
        table.add_column(cr_short(c), justify="right", min_width=width)
    for row in rows:
        table.add_row(*row)
    return [Text(title, style="italic"), table]


def _paired(rows: list[Row]) -> list[RenderableType]:
    """DeLong's paired test against M-CR1 at CR 1, one cell per model and test CR."""
    from .cv import REFERENCE

    paired = [r for r in rows if r.vs_mcr1_diff is not None]
    if not paired:
        why = ("no CR 1 in this run" if all(r.model != REFERENCE for r in rows) else
               f"no model but {REFERENCE}")
        return [Text(f"Paired tests against {REFERENCE}: none ({why})")]
    crs = sorted({r.test_cr for r in rows})
    body = []
    for model in dict.fromkeys(r.model for r in paired):
        cells = {r.test_cr: f"{r.vs_mcr1_diff:+.2f}".replace("0.", ".")
                 + ("*" if r.vs_mcr1_p is not None and r.vs_mcr1_p < 0.05 else " ")
                 for r in paired if r.model == model}
        body.append([model, *(cells.get(c, "") for c in crs)])
    return _compact(f"AUROC minus {REFERENCE}'s at CR 1 on the same breasts (DeLong's paired "
                    "test, * p < 0.05; CIs and p in results.csv)", crs, "model", body, 6)


def _findings(findings: list[FindingRow]) -> list[RenderableType]:
    """The AUROC of each malignant finding type against the test CR, for the curves of the
    figure (each model at its own CR; M-CR1 and the widest mixture at every CR)."""
    from .report import finding_curves

    short = {"mass": "mass", "calcification": "calc", "mass_calcification": "mass+calc"}
    curves = finding_curves(findings)
    crs = sorted({r.test_cr for curve in curves.values() for r in curve})
    body = []
    for name, curve in curves.items():
        body.append([name, *[""] * len(crs)])
        for finding in dict.fromkeys(r.finding for r in curve):
            mine = [r for r in curve if r.finding == finding]
            cells = {r.test_cr: f"{r.auroc:.2f}" for r in mine}
            body.append([f"  {short.get(finding, finding)} ({mine[0].positives})",
                         *(cells.get(c, "") for c in crs)])
    return _compact("AUROC of each malignant finding type (n breasts) against all non-malignant "
                    "breasts (CIs in findings.csv)", crs, "test CR", body, 5)
