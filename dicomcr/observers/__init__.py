"""Model observers: what a compression ratio erases, per finding type (issue 22).

A signal-known-exactly, background-known-statistically task per finding type of the phantom
(calcification cluster, spiculated mass, circumscribed mass), each at sizes drawn from the
phantom's own distribution: lesions inserted at known positions into full-size views of both
vendors, each paired with the same view without them; the whole view through the product's
exact-CR encoder and decoder at every CR; ROIs at the detector's pitch and at the paper's 30 %
(the CNN's input). Observers: a CHO on Laguerre–Gauss channels (convolutional LG for masses), a
CHO on convolutional difference-of-Gaussians channels (suited to calcifications) and the NPWE.
d' and AUC with bootstrap 95 % CIs and the paired difference against CR 1.

    spec = DetectabilitySpec(quick=True)                  # or crs=(1, 20, 5000), vendors=("ge",)
    results = run_detectability(spec, Path("out"), workers=2)
    row = results.row("hologic", FindingType.CALCIFICATION_CLUSTER, 0.25, 5000,
                      Pitch.DETECTOR, ObserverKind.CHO_DOG)
    print(row.dprime_cr1, row.dprime, row.delta_pct, row.delta_pct_low, row.delta_pct_high)
    print(verdict(row))                                    # Verdict.KEPT / DEGRADED / LOST / ...
    rows = site_detectability("hologic", [5000], Path("cache"))   # what the audit calls
"""

from .experiment import run_detectability
from .geometry import Pitch
from .lesions import FindingType
from .measure import ObserverKind
from .results import (
    DetectabilityError,
    DetectabilityResults,
    DetectabilityRow,
    DetectabilitySpec,
    load_results,
)
from .site import site_detectability
from .verdict import Verdict, VerdictRule, verdict

__all__ = [
    "DetectabilityError",
    "DetectabilityResults",
    "DetectabilityRow",
    "DetectabilitySpec",
    "FindingType",
    "ObserverKind",
    "Pitch",
    "Verdict",
    "VerdictRule",
    "load_results",
    "run_detectability",
    "site_detectability",
    "verdict",
]
