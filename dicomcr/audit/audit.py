"""The compression audit: per site, what was sent and archived, against the rules, the guidelines,
the deployed model's cross-CR results and the model observers' detectability of each finding type.

Images come from the node (its job store and storage: what each site's policy produced) and/or
DICOM folders attributed to sites by a site map (`sites.run_audit` collects them). Every verdict
is a function of the files, the guideline table (data: dicomcr/audit/guidelines.csv, or your
own), a `dicomcr cv --cross` results.json and the observers' runs on phantom views
(`detectability`). Bad items are reported per item; the audit completes for the rest.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Policy
from .detectability import DetectabilityRequest, DetectabilityVerdict, judge_sites
from .facts import ImageFacts, UnreadableFile, read_facts, rule_breaks
from .verdicts import GuidelineLimit, GuidelineStatus, ModelStatus

GUIDELINES = Path(__file__).with_name("guidelines.csv")
TOLERANCE = 0.02  # an exact-CR transcoder lands within 2 % of its target
REQUIRED = ("key", "body", "modality", "max_cr", "source")


@dataclass(frozen=True)
class Guideline:
    """One society's limit on compression for a modality, with where it comes from: a maximum CR
    (RATIO), lossless only (LOSSLESS_ONLY, no `max_cr`), or no ratio of its own (NO_RATIO: shown,
    never judged); `method` the compression it covers, `evidence` whether the value was read in
    the body's own document (primary) or in a copy (secondary), `note` where others differ."""

    key: str
    body: str
    modality: str
    max_cr: float | None
    source: str
    limit: GuidelineLimit = GuidelineLimit.RATIO
    method: str = ""
    evidence: str = ""
    note: str = ""

    @property
    def judged(self) -> bool:
        """Whether a site is judged against it (a row without a ratio of its own is not)."""
        return self.limit is not GuidelineLimit.NO_RATIO

    @property
    def label(self) -> str:
        """'UK 15', 'US lossless-only', 'ESR no-ratio'."""
        return f"{self.key} {self.max_cr:g}" if self.limit is GuidelineLimit.RATIO else \
            f"{self.key} {self.limit}"


def _guideline(row: dict[str, str], where: str) -> Guideline:
    """One row of a guideline table; ValueError naming the row."""
    text = (row.get("limit") or "").strip() or GuidelineLimit.RATIO.value
    try:
        limit = GuidelineLimit(text)
    except ValueError:
        raise ValueError(f"{where}: limit {text!r}; choose from "
                         f"{', '.join(GuidelineLimit)}") from None
    value = (row.get("max_cr") or "").strip()
    if limit is GuidelineLimit.RATIO:
        try:
            max_cr = float(value)
        except ValueError:
            max_cr = float("nan")
        if not max_cr > 1.0:  # nan and inf fail too
            raise ValueError(f"{where}: a ratio limit needs max_cr, a number above 1, got {value!r}")
    elif value:
        raise ValueError(f"{where}: a {limit} limit has no max_cr, got {value!r}")
    else:
        max_cr = None
    return Guideline(row["key"], row["body"], row["modality"], max_cr, row["source"], limit,
                     row.get("method") or "", row.get("evidence") or "", row.get("note") or "")


def load_guidelines(path: Path | None = None) -> list[Guideline]:
    """The guideline table: CSV (UTF-8) with the columns key, body, modality, max_cr and source,
    and optionally limit (ratio, lossless-only or no-ratio; missing or empty: ratio), method,
    evidence and note. ValueError, one line, for a table or a row that cannot be used."""
    path = Path(path or GUIDELINES)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
            if missing:
                raise KeyError(", ".join(missing))
            table = [_guideline(row, f"{path}:{reader.line_num} ({row['key']})") for row in reader]
    except (OSError, UnicodeDecodeError, KeyError, csv.Error) as exc:
        raise ValueError(f"{path}: not a guideline table with key, body, modality, max_cr, source "
                         f"({exc})") from exc
    if not table:
        raise ValueError(f"{path}: the guideline table is empty")
    keys = [g.key for g in table]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: a key appears twice ({', '.join(keys)})")
    return table


@dataclass
class ModelVerdict:
    """The deployed model at a site's CR, next to CR 1, from cross-CR results."""

    status: ModelStatus
    model: str = ""
    site_cr: float | None = None
    at_site: dict | None = None  # a results row: auroc, auroc_low, ... at the site's CR
    at_cr1: dict | None = None
    note: str = ""
    curve: list[dict] = field(default_factory=list)  # the model's rows at every test CR


@dataclass
class SiteAudit:
    site: str
    configured_cr: str | None
    images: int = 0
    studies: int = 0
    syntaxes: dict[str, int] = field(default_factory=dict)
    achieved: list[float] = field(default_factory=list)
    histories: dict[str, int] = field(default_factory=dict)
    breaks: list[tuple[str, str]] = field(default_factory=list)  # (file, what it breaks)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    guideline_status: GuidelineStatus | str = ""  # "": the site stores no image to judge
    guideline_text: str = ""
    model: ModelVerdict | None = None
    # the model observers: one verdict per phantom detector standing for the site's lossy images
    detectability: list[DetectabilityVerdict] = field(default_factory=list)
    detectability_note: str = ""  # why there is none: no lossy image, not measured

    @property
    def achieved_summary(self) -> tuple[float, float, float] | None:
        if not self.achieved:
            return None
        return min(self.achieved), statistics.median(self.achieved), max(self.achieved)


def guideline_verdict(max_cr: float, guidelines: list[Guideline], key: str | None,
                      lossy: bool = True) -> tuple[GuidelineStatus, str]:
    """(within | violation, text) for the highest CR a site stores; `lossy`: whether it stores any
    lossy image (what a lossless-only row judges; lossless JPEG 2000 measures CR 2-3). With `key`,
    against that guideline; without, against every row that judges (a violation only above all
    of them; a row without a ratio of its own is never judged)."""
    chosen = [g for g in guidelines if g.key == key] if key else [g for g in guidelines if g.judged]
    if key and not chosen:
        raise ValueError(f"no guideline {key!r}; the table has {', '.join(g.key for g in guidelines)}")
    if not all(g.judged for g in chosen):
        raise ValueError(f"guideline {key} gives no ratio: it is shown, never judged")

    def above(g: Guideline) -> bool:
        if g.limit is GuidelineLimit.LOSSLESS_ONLY:
            return lossy
        return max_cr > g.max_cr * (1 + TOLERANCE)

    parts = {limit: [f"{'above' if above(g) else 'within'} {g.label}" for g in chosen
                     if g.limit is limit] for limit in (GuidelineLimit.RATIO,
                                                        GuidelineLimit.LOSSLESS_ONLY)}
    text = [f"max CR {max_cr:.1f}: " + ", ".join(parts[GuidelineLimit.RATIO])] \
        if parts[GuidelineLimit.RATIO] else []
    if parts[GuidelineLimit.LOSSLESS_ONLY]:
        text.append(f"{'lossy images' if lossy else 'no lossy image'}: "
                    + ", ".join(parts[GuidelineLimit.LOSSLESS_ONLY]))
    status = GuidelineStatus.VIOLATION if all(above(g) for g in chosen) else GuidelineStatus.WITHIN
    return status, "; ".join(text)


def read_results(path: Path) -> dict:
    """The results.json of a `dicomcr cv --cross` results folder (or the file itself);
    ValueError saying why when it cannot be read or is not one."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        document = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"--results {path}: no such folder or file"
                         if not path.exists() else
                         f"--results {path}: no results.json (a folder written by dicomcr cv?)"
                         ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--results {file}: not readable ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("meta"), dict) or \
            not isinstance(document.get("rows"), list):
        raise ValueError(f"--results {file}: not a results.json of dicomcr cv (no meta and rows)")
    return document


def same_data(results: dict, model: dict) -> bool:
    """The results come from the data the deployed model was trained on: cv on the same breasts
    (the data fingerprints match), or that very model tested on held-out data (the results name
    its training data's fingerprint as `model_data_fingerprint`)."""
    meta, trained = results.get("meta", {}), model.get("data_fingerprint")
    return bool(trained) and trained in (meta.get("data_fingerprint"),
                                         meta.get("model_data_fingerprint"))


def model_verdict(results: dict | None, model: dict | None, site_cr: float | None,
                  site_data: bool = False) -> ModelVerdict:
    """OK, degraded (the CI at the site's CR lies wholly below CR 1's), cannot judge (the model
    is no better than chance even at CR 1: its AUROC's CI there reaches 0.5, so it cannot show
    what a CR costs) or not validated. "other data" when the results
    come from other data than the model's (`same_data`), unless `site_data`: the user says they
    are the site's data.

    `results`: a results.json of `dicomcr cv --cross`; `model`: the deployed model's metadata
    (architecture, trained_crs, preprocessing, data_fingerprint)."""
    if results is None or model is None:
        return ModelVerdict(ModelStatus.NO_RESULTS, note="no --results or no deployed model to judge")
    from ..experiments.cv import model_name

    name = model_name(tuple(float(c) for c in model["trained_crs"]))
    meta = results.get("meta", {})
    if meta.get("architecture") != model.get("architecture") or \
            meta.get("preprocessing") != model.get("preprocessing"):
        return ModelVerdict(ModelStatus.OTHER_MODEL, name, note=(
            f"the results are for {meta.get('architecture')} with other preprocessing or "
            f"architecture than the deployed {model.get('architecture')}"))
    if not site_data and not same_data(results, model):
        return ModelVerdict(ModelStatus.OTHER_DATA, name, note=(
            f"the results are for other data: {meta.get('data') or '?'}, fingerprint "
            f"{meta.get('data_fingerprint') or 'not recorded'}; the deployed {name} was trained "
            f"on {model.get('data_fingerprint') or 'data not recorded'} (--same-data if the "
            "results are this site's data)"))
    curve = sorted((r for r in results.get("rows", []) if r.get("model") == name),
                   key=lambda r: r["test_cr"])
    if not curve:
        return ModelVerdict(ModelStatus.OTHER_MODEL, name, note=f"the results hold no {name}")
    if site_cr is None:
        return ModelVerdict(ModelStatus.NOT_VALIDATED, name,
                            note="the site stores no lossy CR to judge",
                            curve=curve)
    at_site = next((r for r in curve if abs(r["test_cr"] - site_cr) <= TOLERANCE * site_cr), None)
    at_cr1 = next((r for r in curve if r["test_cr"] == 1.0), None)
    if at_site is None or at_cr1 is None:
        tested = ", ".join(f"{r['test_cr']:g}" for r in curve)
        return ModelVerdict(ModelStatus.NOT_VALIDATED, name, site_cr, at_site, at_cr1,
                            f"{name} was tested at CR {tested}", curve)
    if at_cr1["auroc_low"] <= 0.5:  # nothing to lose: it cannot show a loss at any CR
        return ModelVerdict(ModelStatus.CANNOT_JUDGE, name, site_cr, at_site, at_cr1,
                            "no better than chance at CR 1 (CI reaches 0.5)", curve)
    degraded = at_site["auroc_high"] < at_cr1["auroc_low"]
    return ModelVerdict(ModelStatus.DEGRADED if degraded else ModelStatus.OK, name, site_cr,
                        at_site, at_cr1, "", curve)


def audit_sites(files: dict[str, list[Path]], configured: dict[str, Policy | None],
                guidelines: list[Guideline], guideline_key: dict[str, str | None],
                results: dict | None, models: dict[str, dict | None],
                site_data: bool = False, detectability: DetectabilityRequest | None = None
                ) -> tuple[list[SiteAudit], list[str]]:
    """Every site's audit, and problems (detectability that could not be judged). `configured`:
    the node's policy per site; `models`: each site's deployed model metadata; `site_data`: the
    results are the sites' data whatever their fingerprint; `detectability`: how the model
    observers judge each site's highest CR (None: not measured)."""
    facts: dict[str, list[ImageFacts]] = {}
    audits = {}
    for site in sorted(set(files) | set(configured)):
        policy = configured.get(site)
        audit = audits[site] = SiteAudit(site, None if policy is None else str(policy))
        facts[site] = []
        for path in files.get(site, []):
            try:
                facts[site].append(read_facts(path))
            except UnreadableFile as exc:
                audit.unreadable.append((str(path), str(exc)))
    originals = {f.sop_instance_uid for items in facts.values() for f in items if not f.lossy}
    for site, audit in audits.items():
        items = facts[site]
        audit.images = len(items)
        audit.studies = len({f.study_uid for f in items})
        for f in items:
            audit.syntaxes[f.transfer_syntax] = audit.syntaxes.get(f.transfer_syntax, 0) + 1
            audit.achieved.append(f.achieved_cr)
            if f.ratios:
                history = "\\".join(f"{r:g}" for r in f.ratios)
                audit.histories[history] = audit.histories.get(history, 0) + 1
            audit.breaks += [(str(f.path), b) for b in rule_breaks(f, originals)]
        summary = audit.achieved_summary
        if summary is not None:
            audit.guideline_status, audit.guideline_text = guideline_verdict(
                summary[2], guidelines, guideline_key.get(site), any(f.lossy for f in items))
        lossy = [f.achieved_cr for f in items if f.lossy]
        site_cr = _site_cr(configured.get(site), lossy)
        audit.model = model_verdict(results, models.get(site), site_cr, site_data)
    if detectability is None:
        for audit in audits.values():
            audit.detectability_note = "not measured (--detectability off)"
        return list(audits.values()), []
    judged, problems = judge_sites(facts, detectability)
    for site, audit in audits.items():
        audit.detectability = judged[site]
        if not judged[site]:
            audit.detectability_note = "no lossy image: nothing lost" if audit.images else \
                "no image to judge"
    return list(audits.values()), problems


def _site_cr(configured: Policy | None, lossy: list[float]) -> float | None:
    """The CR a site's images are held at: the configured one, else (no policy known, lossless
    or pass-through: judged by what arrived) the median achieved."""
    if configured is not None and configured.cr is not None:
        return configured.cr
    return statistics.median(lossy) if lossy else None
