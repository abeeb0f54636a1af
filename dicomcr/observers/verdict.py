"""From a row's paired difference to a verdict a site can act on: kept, degraded, lost.

The rule (`VerdictRule`, quotable as is): a finding the observer does not detect even in the
original image (the lower bound of its CR-1 d' at or below 0) is NOT_SEEN: there is nothing a CR
could take away, and nothing to judge. Otherwise the verdict reads the upper bound of the 95 % CI
of the paired relative difference (d' at the CR minus d' uncompressed, on the same ROIs, in % of
the uncompressed d'): LOST when it lies below -50 % (with 95 % confidence the CR takes away more
than half of what the observer sees uncompressed), DEGRADED when it lies below 0 % (it takes away
something, significantly), KEPT otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from .results import DetectabilityRow


class Verdict(StrEnum):
    """What a CR does to a finding type's detectability, for one observer."""

    KEPT = "kept"
    DEGRADED = "degraded"
    LOST = "lost"
    NOT_SEEN = "not seen"  # not detected even uncompressed: cannot judge


@dataclass(frozen=True)
class VerdictRule:
    """Lost when the upper 95 % bound of the paired difference against CR 1 lies below
    -`lost_pct` % of the uncompressed d'; degraded when below -`degraded_pct` %; kept otherwise;
    not seen when the lower 95 % bound of the uncompressed d' is at or below `seen_dprime`."""

    lost_pct: float = 50.0
    degraded_pct: float = 0.0
    seen_dprime: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.degraded_pct < self.lost_pct <= 100.0:
            raise ValueError(f"need 0 <= degraded_pct < lost_pct <= 100, got {self.degraded_pct}, "
                             f"{self.lost_pct}")


def verdict(row: DetectabilityRow, rule: VerdictRule = VerdictRule()) -> Verdict:
    """The verdict of `rule` on one row (see the module's docstring)."""
    if not math.isfinite(row.dprime_cr1_low) or row.dprime_cr1_low <= rule.seen_dprime:
        return Verdict.NOT_SEEN
    upper = row.delta_pct_high
    if not math.isfinite(upper):
        return Verdict.NOT_SEEN
    if upper < -rule.lost_pct:
        return Verdict.LOST
    if upper < -rule.degraded_pct:
        return Verdict.DEGRADED
    return Verdict.KEPT
