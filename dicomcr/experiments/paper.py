"""The paper's CNN3 results (Jo et al. 2021), the reference that AUROC-against-CR figures show.

Copied from the paper's Table 1 (a), CNN3 row (each model trained and tested at one CR), and
Table 2 (a), row M-CR1 (the model trained on originals, tested at every CR; at CR 1 Table 1's
value, since Table 2 leaves that cell out). AUROC with the paper's 95 % CI; five-fold
cross-validation on 9,111 mammograms of one centre (1,754 malignant).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperPoint:
    """One AUROC of the paper with its 95 % CI."""

    cr: float
    auroc: float
    low: float
    high: float


def _points(values: dict[float, tuple[float, float, float]]) -> tuple[PaperPoint, ...]:
    return tuple(PaperPoint(cr, *v) for cr, v in values.items())


TABLE1_CNN3 = _points({
    1: (0.87, 0.85, 0.89), 15: (0.87, 0.85, 0.89), 20: (0.87, 0.85, 0.89),
    25: (0.86, 0.84, 0.89), 50: (0.87, 0.85, 0.90), 100: (0.88, 0.85, 0.90),
    500: (0.87, 0.85, 0.89), 1000: (0.86, 0.84, 0.88), 5000: (0.87, 0.85, 0.89),
    10000: (0.81, 0.78, 0.83), 11000: (0.78, 0.75, 0.81)})
"""Each CNN3 model trained and tested at one CR (the paper's Table 1 (a))."""

TABLE2_MCR1 = _points({
    1: (0.87, 0.85, 0.89), 15: (0.87, 0.85, 0.89), 20: (0.87, 0.85, 0.89),
    25: (0.87, 0.85, 0.89), 50: (0.87, 0.85, 0.89), 100: (0.87, 0.85, 0.89),
    500: (0.87, 0.85, 0.89), 1000: (0.87, 0.85, 0.89), 5000: (0.84, 0.82, 0.87),
    10000: (0.73, 0.69, 0.76), 11000: (0.71, 0.68, 0.74)})
"""M-CR1 (CNN3 trained on originals) tested at every CR (the paper's Table 2 (a), first row)."""
