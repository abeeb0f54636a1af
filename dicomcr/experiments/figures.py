"""The paper's figures as functions of the results: Fig. 2 (ROC and PR), Table 2's heat map, Fig. 4,
and (beyond the paper) AUROC against CR beside the paper's values, and the AUROC of each malignant
finding type against the test CR.

Each takes arrays or result rows and a path, writes one PNG, and keeps no state (Agg backend).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from ..codec.j2k import cr_short
from .cv import FindingRow, Row
from .paper import PaperPoint


def roc_pr_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], rows: dict[str, Row],
                  path: Path, title: str = "") -> None:
    """Fig. 2: (a) ROC and (b) PR of pooled out-of-fold predictions, one curve per model."""
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 5))
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(curves), 1)))
    for colour, (name, (y, s)) in zip(colours, curves.items(), strict=False):
        row = rows[name]
        fpr, tpr, _ = roc_curve(y, s)
        precision, recall, _ = precision_recall_curve(y, s)
        roc_ax.plot(fpr, tpr, color=colour, lw=1.4,
                    label=f"{name}: {row.auroc:.2f} ({row.auroc_low:.2f}-{row.auroc_high:.2f})")
        pr_ax.plot(recall, precision, color=colour, lw=1.4,
                   label=f"{name}: {row.auprc:.2f} ({row.auprc_low:.2f}-{row.auprc_high:.2f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    if curves:
        prevalence = float(np.mean(next(iter(curves.values()))[0]))
        pr_ax.axhline(prevalence, color="grey", lw=0.8, ls="--")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
               title="(a) ROC, AUROC (95% CI)")
    pr_ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
              title="(b) PR, AUPRC (95% CI)")
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cross_heatmap(rows: list[Row], path: Path, metric: str = "auroc", title: str = "") -> None:
    """Table 2 as a heat map: models (rows) tested at every CR (columns), the value in each cell."""
    models = list(dict.fromkeys(r.model for r in rows))
    crs = sorted({r.test_cr for r in rows})
    grid = np.full((len(models), len(crs)), np.nan)
    for r in rows:
        grid[models.index(r.model), crs.index(r.test_cr)] = getattr(r, metric)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(crs), 1.0 + 0.45 * len(models)))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i in range(len(models)):
        for j in range(len(crs)):
            if np.isfinite(grid[i, j]):
                light = grid[i, j] < np.nanmean(grid)
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if light else "black")
    ax.set_xticks(range(len(crs)), [cr_short(c) for c in crs])
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("test CR")
    ax.set_ylabel("model (trained at)")
    fig.colorbar(image, ax=ax, label=metric.upper())
    ax.set_title(title or f"{metric.upper()} of every model at every test CR")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def augment_figure(rows: list[Row], path: Path, title: str = "") -> None:
    """Fig. 4: AUROC (with the DeLong CI as a band) against the test CR, one line per model."""
    fig, ax = plt.subplots(figsize=(8, 5))
    models = list(dict.fromkeys(r.model for r in rows))
    colours = plt.cm.plasma(np.linspace(0, 0.85, max(len(models), 1)))
    for colour, name in zip(colours, models, strict=False):
        mine = sorted((r for r in rows if r.model == name), key=lambda r: r.test_cr)
        x = np.arange(len(mine))
        ax.plot(x, [r.auroc for r in mine], marker="o", ms=3, color=colour, label=name)
        ax.fill_between(x, [r.auroc_low for r in mine], [r.auroc_high for r in mine],
                        color=colour, alpha=0.08)
    crs = sorted({r.test_cr for r in rows})
    ax.set_xticks(range(len(crs)), [cr_short(c) for c in crs])
    ax.set(xlabel="test CR", ylabel="AUROC (95% CI band)",
           title=title or "Compression as augmentation: models trained on CR mixtures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FINDING_COLOURS = {"mass": "tab:red", "calcification": "tab:blue",
                   "mass_calcification": "tab:purple", "other": "tab:grey", "normal": "tab:green"}


def _log_labels(crs: list[float], share: float = 1 / 16) -> list[str]:
    """CR labels for a log axis, blank where a label would touch its right-hand neighbour (at
    least `share` of the axis's decades apart); the highest CR is always labelled."""
    labels, last = [""] * len(crs), np.inf
    gap = share * np.log10(max(crs) / min(crs)) if len(crs) > 1 else 0.0
    for i in range(len(crs) - 1, -1, -1):
        if last - np.log10(crs[i]) >= gap:
            labels[i], last = cr_short(crs[i]), np.log10(crs[i])
    return labels


def findings_figure(curves: dict[str, list[FindingRow]], path: Path, title: str = "") -> None:
    """AUROC of each malignant finding type (its breasts against every non-malignant one, DeLong
    CI as a band) against the test CR on a log axis: one panel per curve (a model tested at every
    CR, or each model at its own CR), one line per finding type."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4.2), sharey=True,
                             squeeze=False)
    crs = sorted({r.test_cr for rows in curves.values() for r in rows})
    for ax, (name, rows) in zip(axes[0], curves.items(), strict=True):
        for finding in dict.fromkeys(r.finding for r in rows):
            mine = sorted((r for r in rows if r.finding == finding), key=lambda r: r.test_cr)
            x = [r.test_cr for r in mine]
            colour = FINDING_COLOURS.get(finding, "black")
            ax.plot(x, [r.auroc for r in mine], marker="o", ms=3, color=colour,
                    label=f"{finding.replace('_', ' + ')} ({mine[0].positives})")
            ax.fill_between(x, [r.auroc_low for r in mine], [r.auroc_high for r in mine],
                            color=colour, alpha=0.12, lw=0)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xticks(crs, _log_labels(crs))
        ax.minorticks_off()
        ax.set(xlabel="test CR", ylim=(0, 1.02), title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", title="finding (malignant breasts)",
                  title_fontsize=7)
    axes[0][0].set_ylabel("AUROC vs. all non-malignant (95% CI band)")
    fig.suptitle(title or "What compression erases, per malignant finding type")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def auroc_cr_figure(panels: dict[str, tuple[list[Row], tuple[PaperPoint, ...]]], path: Path,
                    title: str = "") -> None:
    """AUROC against CR on a log axis, one panel per (our rows, the paper's points): ours as
    points with their DeLong 95 % CIs, the paper's as a grey line with its CI band."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), sharey=True,
                             squeeze=False)
    for ax, (name, (rows, paper)) in zip(axes[0], panels.items(), strict=True):
        if paper:
            x = [p.cr for p in paper]
            ax.plot(x, [p.auroc for p in paper], color="0.35", lw=1.2, marker="s", ms=3,
                    label="paper (CNN3, 9,111 mammograms)")
            ax.fill_between(x, [p.low for p in paper], [p.high for p in paper], color="0.35",
                            alpha=0.15, lw=0)
        mine = sorted(rows, key=lambda r: r.test_cr)
        x = [r.test_cr for r in mine]
        y = np.array([r.auroc for r in mine])
        ax.errorbar(x, y, yerr=[y - [r.auroc_low for r in mine], [r.auroc_high for r in mine] - y],
                    color="tab:red", marker="o", ms=4, lw=1.2, capsize=3,
                    label=f"this run ({mine[0].n} breasts, {mine[0].positives} malignant)"
                    if mine else "this run")
        crs = sorted(set(x)) or [p.cr for p in paper]  # ticks at this run's CRs
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xticks(crs, _log_labels(crs))
        ax.minorticks_off()
        ax.set(xlabel="CR (train and test)" if "own" in name else "test CR", ylim=(0.3, 1.0),
               title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("AUROC (95% CI)")
    fig.suptitle(title or "AUROC against CR, beside the paper's")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
