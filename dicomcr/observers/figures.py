"""The experiment's figures: d' against CR per finding and pitch beside the paper's CNN3 AUROC,
and example ROIs at every CR. Each takes the results and a path, writes one PNG (Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..codec.j2k import cr_short
from ..experiments.paper import TABLE1_CNN3, TABLE2_MCR1
from .measure import ObserverKind, ViewTask
from .results import DetectabilityResults

OBSERVER_COLOURS = {ObserverKind.CHO_LG: "tab:blue", ObserverKind.CHO_DOG: "tab:red",
                    ObserverKind.NPWE: "tab:green"}
SIZE_STYLES = ("--", "-", ":", "-.")  # the smallest size dashed, the next solid, ...


def _cr_axis(ax: plt.Axes, crs: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(crs, [cr_short(c) for c in crs], rotation=90, fontsize=6)
    ax.minorticks_off()
    ax.grid(alpha=0.3)


def dprime_figure(results: DetectabilityResults, path: Path) -> None:
    """d' (95 % CI band) against CR: a row per finding type, a column per vendor and pitch, a
    line per observer (colour) and size (style); the paper's CNN3 AUROC in the last column."""
    spec = results.spec
    columns = [(v, p) for v in spec.vendors for p in spec.pitches]
    fig = plt.figure(figsize=(3.3 * (len(columns) + 1), 2.9 * len(spec.findings) + 0.6))
    grid = fig.add_gridspec(len(spec.findings), len(columns) + 1)
    crs = list(spec.crs)
    top = max([r.dprime_high for r in results.rows if np.isfinite(r.dprime_high)] + [1.0])
    for i, finding in enumerate(spec.findings):
        for j, (vendor, pitch) in enumerate(columns):
            ax = fig.add_subplot(grid[i, j])
            for observer in spec.observers:
                for s, quantile in enumerate(spec.size_quantiles):
                    for contrast in spec.contrasts:
                        mine = sorted((r for r in results.rows if (r.vendor, r.finding, r.pitch,
                                       r.observer, r.size_quantile, r.contrast) == (
                                       vendor, finding, pitch, observer, quantile, contrast)),
                                      key=lambda r: r.cr)
                        if not mine:
                            continue
                        x = [r.cr for r in mine]
                        label = f"{observer.value} {mine[0].size_mm:g} mm" + (
                            f" x{contrast:g}" if contrast != 1.0 else "")
                        ax.plot(x, [r.dprime for r in mine], color=OBSERVER_COLOURS[observer],
                                ls=SIZE_STYLES[s % len(SIZE_STYLES)], lw=1.1, marker="o", ms=2,
                                label=label, alpha=contrast / max(spec.contrasts))
                        ax.fill_between(x, [r.dprime_low for r in mine],
                                        [r.dprime_high for r in mine],
                                        color=OBSERVER_COLOURS[observer], alpha=0.1, lw=0)
            ax.axhline(0.0, color="grey", lw=0.8)
            _cr_axis(ax, crs)
            ax.set_ylim(min(-0.3, ax.get_ylim()[0]), top * 1.05)
            pitch_mm = next((r.pitch_mm for r in results.rows
                             if (r.vendor, r.pitch) == (vendor, pitch)), float("nan"))
            ax.set_title(f"{finding.label}\n{vendor}, {pitch.value} pitch ({pitch_mm:.3g} mm)",
                         fontsize=8)
            if j == 0:
                ax.set_ylabel("d' (95% CI band)")
            if i == len(spec.findings) - 1:
                ax.set_xlabel("CR")
            if i == 0 and j == 0:
                ax.legend(fontsize=5, loc="lower left")
    paper = fig.add_subplot(grid[:, -1])
    for points, colour, name in ((TABLE1_CNN3, "0.2", "CNN3 trained and tested at the CR (Table 1)"),
                                 (TABLE2_MCR1, "tab:orange", "M-CR1 tested at the CR (Table 2)")):
        x = [p.cr for p in points]
        paper.plot(x, [p.auroc for p in points], color=colour, marker="s", ms=3, lw=1.2, label=name)
        paper.fill_between(x, [p.low for p in points], [p.high for p in points], color=colour,
                           alpha=0.15, lw=0)
    _cr_axis(paper, [p.cr for p in TABLE1_CNN3])
    paper.set(ylim=(0.5, 1.0), xlabel="CR", ylabel="AUROC (95% CI)",
              title="the paper's CNN3 (Jo et al. 2021)\n9,111 mammograms")
    paper.legend(fontsize=6, loc="lower left")
    fig.suptitle("What a CR erases, per finding: model observers' d' against CR "
                 f"({results.rows[0].pairs if results.rows else 0} pairs per line)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rois_figure(results: DetectabilityResults, tasks: list[ViewTask], path: Path) -> None:
    """The signal-present ROI of one lesion per finding type at every CR and pitch (the first
    vendor's views), each row windowed on its CR-1 ROI."""
    spec = results.spec
    found: list[tuple[str, np.ndarray]] = []
    for task in tasks:
        for i in task.examples:
            cls = task.classes[task.placements[i].lesion]
            with np.load(task.path) as stored:
                for pitch in spec.pitches:
                    found.append((f"{cls.finding.label} {cls.size_mm:g} mm\n{task.vendor}, "
                                  f"{pitch.value} pitch",
                                  stored[f"example_{i}_{pitch.value}"].astype(np.float32)))
    if not found:
        found.append(("no example", np.zeros((len(spec.crs), 3, 3), dtype=np.float32)))
    fig, axes = plt.subplots(len(found), len(spec.crs), squeeze=False,
                             figsize=(1.25 * len(spec.crs) + 1.2, 1.3 * len(found) + 0.6))
    for row, (name, stack) in zip(axes, found, strict=True):
        lo, hi = np.percentile(stack[0], [1.0, 99.5])
        for ax, image in zip(row, stack, strict=True):
            ax.imshow(image, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    for ax, cr in zip(axes[0], spec.crs, strict=True):
        ax.set_title("original" if cr == 1.0 else f"CR {cr_short(cr)}", fontsize=7)
    fig.suptitle("The same lesion, its whole view compressed at each CR", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

