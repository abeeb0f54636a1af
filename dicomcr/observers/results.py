"""The experiment's inputs and outputs: its spec, its rows, the folder it writes, read back.

`DetectabilitySpec` is everything the rows depend on, checked when made; `DetectabilityRow` one
finding type x size x contrast at one CR and pitch for one observer and vendor; the folder holds
results.csv and results.json (the rows, the spec, the run's meta), which `load_results` reads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..codec.j2k import CODEC_REVISION, PAPER_CRS, target_problems, uncompressed_bytes
from ..outputs import partial_name, write_text_atomically
from ..phantom.params import DETECTORS
from .geometry import Pitch
from .lesions import FindingType, LesionClass
from .measure import OBSERVERS_REVISION, ObserverKind

FULL_SIZES, QUICK_SIZES = (0.25, 0.75), (0.5,)
"""Sizes as quantiles of the phantom's size distribution of each finding: its quartiles, or
(`quick`) its median."""
FULL_PAIRS, QUICK_PAIRS = 100, 16
"""Signal-present/absent pairs per vendor x finding x size x contrast: two sizes make 200 per
finding type and vendor; `quick` makes a demo within a minute on 2 cores (one size, intervals
about 2.5 times as wide)."""
FULL_SPLITS, QUICK_SPLITS = 5, 3
FULL_BOOTSTRAP, QUICK_BOOTSTRAP = 1000, 200
MIN_PAIRS = 16  # a CHO of up to 10 channels needs more training pairs than channels
RESULTS = ("results.csv", "results.json")
FIGURES = ("fig_dprime_cr.png", "fig_rois.png")


class DetectabilityError(ValueError):
    """Bad input to the experiment, said in one line (nothing was computed or lost)."""


def _choices(kind: type, values: Iterable, what: str) -> tuple:
    out = []
    for value in values:
        try:
            out.append(kind(value))
        except ValueError:
            names = ", ".join(str(k.value if hasattr(k, "value") else k) for k in kind)
            raise DetectabilityError(f"unknown {what} {value!r}; choose from {names}") from None
    if not out:
        raise DetectabilityError(f"no {what} given")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class DetectabilitySpec:
    """Everything the rows depend on; checked when made (`DetectabilityError`, one line).

    `crs` always gains 1 (the original, every paired difference's reference).
    `size_quantiles`, `pairs`, `splits` and `bootstrap` left at None take the full or the
    `quick` values. Strings are
    accepted for the enums (e.g. findings=("spiculated_mass",))."""

    findings: tuple[FindingType, ...] = tuple(FindingType)
    size_quantiles: tuple[float, ...] | None = None
    contrasts: tuple[float, ...] = (1.0,)
    crs: tuple[float, ...] = PAPER_CRS
    vendors: tuple[str, ...] = ("hologic", "ge")
    pitches: tuple[Pitch, ...] = tuple(Pitch)
    observers: tuple[ObserverKind, ...] = tuple(ObserverKind)
    pairs: int | None = None
    seed: int = 0
    quick: bool = False
    splits: int | None = None
    bootstrap: int | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("findings", _choices(FindingType, self.findings, "finding type"))
        put("pitches", _choices(Pitch, self.pitches, "pitch"))
        put("observers", _choices(ObserverKind, self.observers, "observer"))
        vendors = tuple(dict.fromkeys(self.vendors))
        for vendor in vendors:
            if vendor not in DETECTORS:
                raise DetectabilityError(f"unknown vendor {vendor!r}; choose from {', '.join(DETECTORS)}")
        if not vendors:
            raise DetectabilityError("no vendor given")
        put("vendors", vendors)
        asked = self.size_quantiles or (QUICK_SIZES if self.quick else FULL_SIZES)
        quantiles = tuple(sorted({float(q) for q in asked}))
        if not quantiles or not all(0.0 < q < 1.0 for q in quantiles):
            raise DetectabilityError(f"size quantiles must lie strictly between 0 and 1, got "
                                     f"{self.size_quantiles}")
        put("size_quantiles", quantiles)
        contrasts = tuple(sorted({float(c) for c in self.contrasts}))
        if not contrasts or not all(math.isfinite(c) and c > 0 for c in contrasts):
            raise DetectabilityError(f"contrasts must be > 0, got {self.contrasts}")
        put("contrasts", contrasts)
        put("crs", self._checked_crs())
        pairs = self.pairs if self.pairs is not None else (QUICK_PAIRS if self.quick else FULL_PAIRS)
        splits = self.splits if self.splits is not None else (QUICK_SPLITS if self.quick else FULL_SPLITS)
        boot = self.bootstrap if self.bootstrap is not None else (
            QUICK_BOOTSTRAP if self.quick else FULL_BOOTSTRAP)
        if int(pairs) != pairs or pairs < MIN_PAIRS:
            raise DetectabilityError(f"pairs must be a whole number of at least {MIN_PAIRS}, got {pairs}")
        if int(splits) != splits or splits < 1 or int(boot) != boot or boot < 20:
            raise DetectabilityError(f"splits must be >= 1 and bootstrap >= 20, got {splits}, {boot}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise DetectabilityError(f"the seed must be a non-negative whole number, got {self.seed}")
        put("pairs", int(pairs))
        put("splits", int(splits))
        put("bootstrap", int(boot))

    def _checked_crs(self) -> tuple[float, ...]:
        crs = []
        for value in self.crs:
            try:
                cr = float(value)
            except (TypeError, ValueError):
                raise DetectabilityError(f"a compression ratio must be a number, got {value!r}") from None
            if not math.isfinite(cr) or cr < 1.0:
                raise DetectabilityError(f"compression ratio must be >= 1 (1 is the original), got {value}")
            crs.append(cr)
        crs = sorted({1.0, *crs})
        for vendor in self.vendors:
            detector = DETECTORS[vendor]
            raw = uncompressed_bytes(np.empty((detector.rows, detector.columns), np.uint16), 16)
            problems = target_problems([c for c in crs if c > 1.0], raw)
            if problems:
                raise DetectabilityError(f"{vendor} view ({detector.columns} x {detector.rows}): "
                                         f"{next(iter(problems.values()))}")
        return tuple(crs)

    @property
    def classes(self) -> tuple[LesionClass, ...]:
        """Each finding type at each size and contrast."""
        return tuple(LesionClass(f, q, c, self.seed) for f in self.findings
                     for q in self.size_quantiles for c in self.contrasts)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, values: dict) -> DetectabilitySpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @property
    def identity(self) -> str:
        """A hash of the spec and of the revisions of the codec and the observers."""
        text = json.dumps({"spec": self.as_dict(), "codec": CODEC_REVISION,
                           "observers": OBSERVERS_REVISION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class DetectabilityRow:
    """One finding type x size x contrast, at one CR and pitch, for one observer and vendor.

    d' and AUC = Phi(d'/sqrt 2) with percentile-bootstrap 95 % CIs over pairs (see `stats`);
    `delta_*` is this d' minus the same observer's d' at CR 1 on the same pairs and resamples,
    `delta_pct_*` the same relative to the CR-1 d' (in %); `dprime_cr1*` that reference."""

    vendor: str
    finding: FindingType
    size_quantile: float
    size_mm: float
    contrast: float
    cr: float
    achieved_cr: float  # mean over the task's images (both of every pair)
    pitch: Pitch
    pitch_mm: float
    observer: ObserverKind
    pairs: int
    dprime: float
    dprime_low: float
    dprime_high: float
    auc: float
    auc_low: float
    auc_high: float
    dprime_cr1: float
    dprime_cr1_low: float
    dprime_cr1_high: float
    delta_dprime: float
    delta_low: float
    delta_high: float
    delta_pct: float
    delta_pct_low: float
    delta_pct_high: float

    @classmethod
    def from_dict(cls, values: dict) -> DetectabilityRow:
        kinds = {"finding": FindingType, "pitch": Pitch, "observer": ObserverKind}
        out = {}
        for f in fields(cls):
            value = values[f.name]
            if f.name in kinds:
                value = kinds[f.name](value)
            elif f.name in ("vendor",):
                value = str(value)
            elif f.name == "pairs":
                value = int(value)
            else:
                value = float("nan") if value in (None, "") else float(value)
            out[f.name] = value
        return cls(**out)


@dataclass(frozen=True)
class DetectabilityResults:
    """What a run wrote: its spec, its rows, and the run's meta (views, seconds, methods)."""

    folder: Path
    spec: DetectabilitySpec
    rows: tuple[DetectabilityRow, ...]
    meta: dict = field(default_factory=dict)

    def row(self, vendor: str, finding: FindingType | str, size_quantile: float, cr: float,
            pitch: Pitch | str, observer: ObserverKind | str, contrast: float = 1.0
            ) -> DetectabilityRow:
        """The row of these keys; KeyError if the run has none."""
        key = (vendor, FindingType(finding), float(size_quantile), float(contrast), float(cr),
               Pitch(pitch), ObserverKind(observer))
        for r in self.rows:
            if (r.vendor, r.finding, r.size_quantile, r.contrast, r.cr, r.pitch, r.observer) == key:
                return r
        raise KeyError(f"no detectability row for {key}")


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


def write_results(out: Path, spec: DetectabilitySpec, rows: list[DetectabilityRow], meta: dict
                  ) -> None:
    """OUT/results.csv and results.json, each written whole or not at all."""
    partial = partial_name(out / "results.csv")
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in fields(DetectabilityRow)])
        for r in rows:
            writer.writerow([_cell(v) for v in asdict(r).values()])
    os.replace(partial, out / "results.csv")
    document = {"identity": spec.identity, "spec": spec.as_dict(), "meta": meta,
                "rows": [asdict(r) for r in rows], "files": sorted((*RESULTS, *FIGURES))}
    write_text_atomically(out / "results.json",
                          json.dumps(document, indent=1, default=_json_value, allow_nan=True))


def _json_value(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value)} is not JSON")


def load_results(folder: Path) -> DetectabilityResults:
    """The results a run wrote into `folder`; DetectabilityError if there are none."""
    folder = Path(folder)
    try:
        document = json.loads((folder / "results.json").read_text())
        spec = DetectabilitySpec.from_dict(document["spec"])
        rows = tuple(DetectabilityRow.from_dict(r) for r in document["rows"])
    except FileNotFoundError:
        raise DetectabilityError(f"no detectability results in {folder} (no results.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DetectabilityError(f"cannot read {folder / 'results.json'}: {exc}") from None
    return DetectabilityResults(folder, spec, rows, document.get("meta", {}))

