"""What a site's compression takes away from each finding type, by the model observers (issue 22).

Per site, the lossy images are grouped by the phantom detector that stands for them
(`match_detector`: their Manufacturer, else the nearest pixel spacing; images of another geometry
are judged on that detector's full-size views, and the verdict says so), and each group is judged
at the highest CR it stores, rounded to two significant figures (`judged_cr`: images a few per
mille apart share one cached run), by `observers.site_detectability` on phantom views of that
detector, cached by CR, detector geometry and the codec's and observers' revisions under
`cache_folder()`. No trained model is needed: a site gets a verdict on its first day.

Per finding type and size, at each pitch, the reading is that of the observer that sees the
finding best uncompressed (the highest d' at CR 1: what a CR takes away is measured against the
most there is to lose), with its paired difference against CR 1 and `observers.verdict`
(`VerdictRule`). The detector's pitch (the pixels the archive keeps and the reader sees) gives the
verdict; the paper's 30 % pitch (the CNN's input) is shown beside it.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..observers import (
    DetectabilityError,
    DetectabilityResults,
    DetectabilityRow,
    DetectabilitySpec,
    FindingType,
    ObserverKind,
    Pitch,
    Verdict,
    VerdictRule,
    site_detectability,
    verdict,
)
from ..phantom.params import DETECTORS
from .facts import ImageFacts

CACHE_ENV = "DICOMCR_DETECTABILITY_CACHE"
OBSERVER_NAMES = {ObserverKind.CHO_LG: "CHO-LG", ObserverKind.CHO_DOG: "CHO-DoG",
                  ObserverKind.NPWE: "NPWE"}
SEVERITY = (Verdict.NOT_SEEN, Verdict.KEPT, Verdict.DEGRADED, Verdict.LOST)  # mildest first
RULE = VerdictRule()  # lost below -50 %, degraded below 0 %, not seen at a CR-1 d' bound <= 0


def rule_text(rule: VerdictRule = RULE) -> str:
    """The verdict rule in words (the README and the reports quote it)."""
    return (f"lost when the upper 95 % bound of the paired change of d\u2032 against CR 1 (same "
            f"ROIs) lies below \u2212{rule.lost_pct:g} % of the uncompressed d\u2032, degraded when "
            f"it lies below {_num(-rule.degraded_pct or 0.0, 'g')} %, kept "
            f"otherwise; not seen (nothing to judge) when the lower 95 % bound of the uncompressed "
            f"d\u2032 is at or below {rule.seen_dprime:g}")


def cache_folder(path: Path | None = None) -> Path:
    """Where the audit's observer runs are cached: `path`, else $DICOMCR_DETECTABILITY_CACHE, else
    $XDG_CACHE_HOME/dicomcr/detectability (by default ~/.cache/dicomcr/detectability)."""
    if path is not None:
        return Path(path)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dicomcr" / "detectability"


def judged_cr(highest: float) -> float:
    """The CR a site is judged at: its highest achieved CR to two significant figures (5013 ->
    5000, 100.5 -> 100, 11751 -> 12000)."""
    return float(f"{highest:.2g}")


def _num(value: float, form: str = ".1f") -> str:
    """A number with a true minus sign (none on a zero: -0.3 % reads 0 %); n/a when not finite."""
    if not math.isfinite(value):
        return "n/a"
    text = f"{value:{form}}"
    return text.lstrip("-") if float(text) == 0 else text.replace("-", "\u2212")


def _token(manufacturer: str) -> str:
    """The first word of a Manufacturer, upper case ("HOLOGIC, Inc." -> HOLOGIC)."""
    words = re.findall(r"[A-Z0-9]+", manufacturer.upper())
    return words[0] if words else ""


@dataclass(frozen=True)
class DetectorMatch:
    """The phantom detector that stands for some images, and why when it is not their own."""

    vendor: str
    images: str  # what the images are: "HOLOGIC, Inc. 832 x 1024 at 0.28 mm"
    note: str  # "" when the images are that detector's own geometry


def _geometry(vendor: str) -> str:
    d = DETECTORS[vendor]
    return f"{d.model_name} ({d.columns} x {d.rows} at {d.pixel_spacing_mm:g} mm)"


def match_detector(manufacturer: str, rows: int, columns: int, spacing_mm: float | None
                   ) -> DetectorMatch:
    """The phantom detector of the images' manufacturer (its first word: HOLOGIC, GE), else the
    one nearest in pixel spacing (then in pixel count); said when their geometry is not its own."""
    images = (f"{manufacturer.strip() or 'no Manufacturer'} {columns} x {rows}"
              + (f" at {spacing_mm:g} mm" if spacing_mm else ", no pixel spacing"))
    by_maker = {_token(d.manufacturer): key for key, d in DETECTORS.items()}
    vendor = by_maker.get(_token(manufacturer))
    if vendor is None:
        def distance(key: str) -> tuple[float, float]:
            d = DETECTORS[key]
            spacing = abs(math.log(spacing_mm / d.pixel_spacing_mm)) if spacing_mm else 0.0
            return spacing, abs(math.log(max(rows * columns, 1) / (d.rows * d.columns)))

        vendor = min(DETECTORS, key=distance)
        return DetectorMatch(vendor, images, f"{images}: an unknown manufacturer, judged on the "
                                             f"nearest phantom detector, {_geometry(vendor)}")
    d = DETECTORS[vendor]
    own = (rows, columns) == (d.rows, d.columns) and spacing_mm is not None and \
        abs(spacing_mm - d.pixel_spacing_mm) <= 0.01 * d.pixel_spacing_mm
    return DetectorMatch(vendor, images, "" if own else
                         f"{images}: judged on the phantom's views of the {_geometry(vendor)}")


@dataclass(frozen=True)
class Reading:
    """One finding at one pitch and CR, as one observer reads it: d' uncompressed and at the CR
    (95 % CIs), the paired change in % of the uncompressed d' (95 % CI), the verdict."""

    pitch: Pitch
    pitch_mm: float
    observer: ObserverKind
    dprime_cr1: float
    dprime_cr1_low: float
    dprime_cr1_high: float
    dprime: float
    dprime_low: float
    dprime_high: float
    delta_pct: float
    delta_pct_low: float
    delta_pct_high: float
    verdict: Verdict

    @classmethod
    def of(cls, row: DetectabilityRow, rule: VerdictRule) -> Reading:
        return cls(row.pitch, row.pitch_mm, row.observer, row.dprime_cr1, row.dprime_cr1_low,
                   row.dprime_cr1_high, row.dprime, row.dprime_low, row.dprime_high, row.delta_pct,
                   row.delta_pct_low, row.delta_pct_high, verdict(row, rule))

    @property
    def observer_name(self) -> str:
        return OBSERVER_NAMES[self.observer]

    @property
    def dprimes(self) -> str:
        """'2.8 → 0.9'"""
        return f"{_num(self.dprime_cr1)} \u2192 {_num(self.dprime)}"

    @property
    def percent(self) -> str:
        """'−69 %': the paired change in % of the uncompressed d'."""
        return f"{_num(self.delta_pct, '.0f')} %"

    @property
    def interval(self) -> str:
        """'−81 to −56': the paired change's 95 % CI, in %."""
        return f"{_num(self.delta_pct_low, '.0f')} to {_num(self.delta_pct_high, '.0f')}"

    @property
    def change(self) -> str:
        """'−69 % (−81 to −56)': the paired change and its 95 % CI."""
        return f"{self.percent} ({self.interval})"


def _best(rows: Iterable[DetectabilityRow]) -> DetectabilityRow:
    """The row of the observer that sees the finding best uncompressed (highest CR-1 d')."""
    return max(rows, key=lambda r: r.dprime_cr1 if math.isfinite(r.dprime_cr1) else -math.inf)


@dataclass(frozen=True)
class FindingVerdict:
    """One finding type at one size at one CR: its reading at the detector's pitch (the verdict)
    and at the paper's 30 % pitch (the CNN's input; None when not measured)."""

    finding: FindingType
    size_mm: float
    contrast: float
    cr: float
    detector: Reading
    paper: Reading | None

    @property
    def verdict(self) -> Verdict:
        return self.detector.verdict

    @property
    def readings(self) -> tuple[Reading, ...]:
        """Its reading at the detector's pitch, then at the paper's when measured."""
        return (self.detector,) if self.paper is None else (self.detector, self.paper)

    @property
    def name(self) -> str:
        """'calcification cluster 0.35 mm'"""
        return f"{self.finding.label} {self.size_mm:.2g} mm" + (
            f" x{self.contrast:g} contrast" if self.contrast != 1.0 else "")

    def text(self) -> str:
        """'calcification cluster 0.35 mm: d′ 2.8 → 0.9 (−69 %, 95 % CI −81 to −56 %) at CR 5000:
        lost (NPWE at 0.07 mm; at the CNN's 0.23 mm, NPWE: d′ 1.8 → 1.3, −28 %: degraded)'"""
        d = self.detector
        out = (f"{self.name}: d\u2032 {d.dprimes} ({d.percent}, 95 % CI {d.interval} %) at CR "
               f"{self.cr:g}: {d.verdict} ({d.observer_name} at {d.pitch_mm:.2g} mm")
        if self.paper is not None:
            p = self.paper
            out += (f"; at the CNN's {p.pitch_mm:.2g} mm, {p.observer_name}: d\u2032 {p.dprimes}, "
                    f"{p.percent}: {p.verdict}")
        return out + ")"


def finding_verdicts(rows: Iterable[DetectabilityRow], rule: VerdictRule = RULE
                     ) -> list[FindingVerdict]:
    """The rows of one vendor as one FindingVerdict per finding x size x contrast x CR (CR 1, the
    reference, left out), each pitch read by its best observer."""
    groups: dict[tuple, dict[Pitch, list[DetectabilityRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.cr != 1.0:
            groups[(r.finding, r.size_mm, r.contrast, r.cr)][r.pitch].append(r)
    out = []
    for (finding, size, contrast, cr), pitches in groups.items():
        if Pitch.DETECTOR not in pitches:
            continue
        read = {p: Reading.of(_best(rs), rule) for p, rs in pitches.items()}
        out.append(FindingVerdict(finding, size, contrast, cr, read[Pitch.DETECTOR],
                                  read.get(Pitch.PAPER)))
    order = list(FindingType)
    return sorted(out, key=lambda v: (v.cr, order.index(v.finding), v.size_mm, v.contrast))


def by_line(verdicts: Iterable[FindingVerdict]) -> dict[tuple[str, Pitch], dict[float, Reading]]:
    """{(finding x size, pitch): {CR: its reading}}: each line of a run, in the verdicts' finding
    order, the detector's pitch before the paper's, CRs ascending."""
    verdicts = sorted(verdicts, key=lambda v: v.cr)
    lines: dict[tuple[str, Pitch], dict[float, Reading]] = defaultdict(dict)
    for v in verdicts:
        for reading in v.readings:
            lines[(v.name, reading.pitch)][v.cr] = reading
    names, pitches = list(dict.fromkeys(v.name for v in verdicts)), list(Pitch)
    return {key: lines[key] for key in sorted(lines, key=lambda k: (names.index(k[0]),
                                                                     pitches.index(k[1])))}


def worst(verdicts: Iterable[Verdict]) -> Verdict | None:
    """The most severe verdict (lost > degraded > kept > not seen); None when there is none."""
    found = list(verdicts)
    return max(found, key=SEVERITY.index) if found else None


@dataclass
class DetectabilityVerdict:
    """A site's lossy images of one phantom detector, judged at the highest CR they store."""

    vendor: str
    detector: str  # the phantom views: "Selenia Dimensions (3328 x 4096 at 0.07 mm)"
    images: int
    geometries: list[str]  # what the site's images are
    note: str  # why another geometry stands for them; "" when it is their own
    highest_cr: float  # the highest achieved CR of these images
    cr: float  # the CR judged (`judged_cr`)
    quick: bool
    findings: list[FindingVerdict] = field(default_factory=list)
    error: str = ""  # why it could not be judged

    @property
    def verdict(self) -> Verdict | None:
        """The most severe verdict of its findings at the detector's pitch."""
        return worst(f.verdict for f in self.findings)

    def headline(self) -> str:
        """'lost at CR 5000 (highest stored 5013; hologic phantom views, quick)'"""
        said = (self.error and f"not judged: {self.error}") or str(self.verdict or "no finding")
        return (f"{said} at CR {self.cr:g} (highest stored {self.highest_cr:.1f}; {self.vendor} "
                f"phantom views{', quick' if self.quick else ''})")


@dataclass(frozen=True)
class DetectabilityRequest:
    """How the audit measures detectability: the quick or the full task, where runs are cached,
    worker processes (None: every core) and a progress callback (done, total, status)."""

    quick: bool = True
    cache: Path = field(default_factory=cache_folder)
    workers: int | None = None
    progress: Callable[..., None] | None = None


def _groups(items: list[ImageFacts], quick: bool) -> list[DetectabilityVerdict]:
    members: dict[str, list[tuple[ImageFacts, DetectorMatch]]] = defaultdict(list)
    for f in items:
        if f.lossy and judged_cr(f.achieved_cr) > 1.0:
            match = match_detector(f.manufacturer, f.rows, f.columns, f.pixel_spacing_mm)
            members[match.vendor].append((f, match))
    out = []
    for vendor, pairs in sorted(members.items()):
        highest = max(f.achieved_cr for f, _ in pairs)
        notes = sorted({m.note for _, m in pairs if m.note})
        out.append(DetectabilityVerdict(vendor, _geometry(vendor), len(pairs),
                                        sorted({m.images for _, m in pairs}), "; ".join(notes),
                                        highest, judged_cr(highest), quick))
    return out


def _labelled(report: Callable[..., None] | None, status: str
              ) -> Callable[[int, int], None] | None:
    """`report(done, total, status)` as the (done, total) callback of one run."""
    return None if report is None else (lambda done, total: report(done, total, status))


def judge_sites(facts: dict[str, list[ImageFacts]], request: DetectabilityRequest,
                rule: VerdictRule = RULE
                ) -> tuple[dict[str, list[DetectabilityVerdict]], list[str]]:
    """{site: its lossy images judged per phantom detector} and problems (one line each: a group
    that could not be judged). One observer run per detector and CR, shared by the sites, each
    cached (`site_detectability`)."""
    judged = {site: _groups(items, request.quick) for site, items in facts.items()}
    runs: dict[tuple[str, float], list[DetectabilityRow] | str] = {}
    for vendor, cr in sorted({(g.vendor, g.cr) for groups in judged.values() for g in groups}):
        progress = _labelled(request.progress, f"{vendor} CR {cr:g}")
        try:
            runs[(vendor, cr)] = site_detectability(vendor, [cr], request.cache, request.quick,
                                                    request.workers, progress)
        except (DetectabilityError, OSError) as exc:
            runs[(vendor, cr)] = str(exc)
    problems = []
    for site, groups in judged.items():
        for g in groups:
            run = runs[(g.vendor, g.cr)]
            if isinstance(run, str):
                g.error = run
                problems.append(f"site {site}: detectability not judged at CR {g.cr:g} "
                                f"({g.vendor} phantom views): {run}")
            else:
                g.findings = finding_verdicts(run, rule)
    return judged, problems


def results_verdicts(results: DetectabilityResults, rule: VerdictRule = RULE
                     ) -> dict[str, list[FindingVerdict]]:
    """A results folder's rows as FindingVerdicts, per vendor."""
    return {v: finding_verdicts([r for r in results.rows if r.vendor == v], rule)
            for v in results.spec.vendors}


@dataclass(frozen=True)
class Onset:
    """Where one finding x size of one vendor falls at one pitch: the first CR it is degraded (or
    lost) at, and the first it is lost at (None: at no CR measured)."""

    vendor: str
    name: str
    reading_cr1: Reading  # the best observer, its CR-1 d' (the same at every CR)
    degraded_from: float | None
    lost_from: float | None


def onsets(results: DetectabilityResults, rule: VerdictRule = RULE) -> list[Onset]:
    """Every finding x size of every vendor at every pitch of a run (in that order), where it falls."""
    out = []
    for vendor, verdicts in results_verdicts(results, rule).items():
        for (name, _), by_cr in by_line(verdicts).items():
            points = list(by_cr.items())
            degraded = [cr for cr, r in points if r.verdict in (Verdict.DEGRADED, Verdict.LOST)]
            lost = [cr for cr, r in points if r.verdict is Verdict.LOST]
            out.append(Onset(vendor, name, points[0][1], degraded[0] if degraded else None,
                             lost[0] if lost else None))
    return out


def detectability_spec(quick: bool = False, crs: Sequence[float] | None = None,
                       vendors: Sequence[str] | None = None, findings: Sequence[str] | None = None
                       ) -> DetectabilitySpec:
    """The spec of `dicomcr detectability`: the defaults (`DetectabilitySpec`, the full task or
    `quick`) where an option is not given; DetectabilityError for a bad one."""
    given = {"crs": crs, "vendors": vendors, "findings": findings}
    return DetectabilitySpec(quick=quick, **{k: tuple(v) for k, v in given.items() if v})


def onset_table(results: DetectabilityResults, rule: VerdictRule = RULE):
    """A rich table (80 columns) of where each finding falls, per vendor and pitch: the best
    observer, its d' uncompressed (95 % CI), the first CR it is degraded at and lost at."""
    from rich import box
    from rich.table import Table

    from ..codec.j2k import cr_short

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                  title=f"The first CR each finding is degraded and lost at: {results.folder}",
                  caption=f"Verdicts: {rule_text(rule)}.", caption_justify="left")
    for name in ("vendor", "finding", "pitch", "observer", "d\u2032 at CR 1", "degraded",
                 "lost"):
        table.add_column(name, no_wrap=name != "finding")
    previous = None
    for o in onsets(results, rule):
        r = o.reading_cr1
        falls = [cr_short(cr) if cr else "-" for cr in (o.degraded_from, o.lost_from)]
        if r.verdict is Verdict.NOT_SEEN:  # not seen uncompressed: nothing to lose
            falls = ["not seen", ""]
        same = previous == (o.vendor, o.name)
        previous = (o.vendor, o.name)
        table.add_row("" if same else o.vendor, "" if same else o.name, f"{r.pitch_mm:.2g} mm",
                      r.observer_name, f"{_num(r.dprime_cr1)} ({_num(r.dprime_cr1_low)}\u2013"
                      f"{_num(r.dprime_cr1_high)})", *falls)
    return table
