"""`dicomcr audit` as one call: the sites collected from a node (its configuration, job store and
storage) and from DICOM folders (named by a site map), each judged (`audit.audit_sites`), and the
exit gate the user asked for (`Audit.fails`, and why: `Audit.reasons`). The command and the demo
call `run_audit`.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, Policy, load_config
from ..jobs import InstanceState, JobStore, ObjectKind, Storage
from ..observers import Verdict
from ..transcode import find_inputs
from .audit import Guideline, SiteAudit, audit_sites, load_guidelines, read_results
from .detectability import DetectabilityRequest, cache_folder
from .verdicts import DetectabilityMode, FailOn, GuidelineStatus, ModelStatus

DETECTABILITY_GATES = {FailOn.LOST: (Verdict.LOST,),
                       FailOn.DEGRADED_DETECTABILITY: (Verdict.DEGRADED, Verdict.LOST)}


@dataclass(frozen=True)
class Audit:
    """Every site's audit, what could not be audited (one line each) and the guideline table."""

    sites: list[SiteAudit]
    problems: list[str]
    guidelines: list[Guideline]

    def write(self, json_out: Path | None = None, html_out: Path | None = None) -> list[str]:
        """The audit as JSON and/or HTML (`report.write_json`, `write_html`); 'json: PATH' for
        each file written."""
        from .report import write_html, write_json

        written = []
        for kind, path, write in (("json", json_out, write_json), ("html", html_out, write_html)):
            if path is not None:
                write(self.sites, self.problems, self.guidelines, path)
                written.append(f"{kind}: {path}")
        return written

    def fails(self, gate: FailOn | None) -> bool:
        """Whether the audit fails `gate` (None: nothing fails it)."""
        return bool(self.reasons(gate))

    def reasons(self, gate: FailOn | None) -> list[str]:
        """Why the audit fails `gate`, one line per site (none: it passes). A model that cannot
        judge (no better than chance at CR 1) fails DEGRADED: it could not show a loss, so passing
        it would let a degraded site through unseen."""
        out = []
        for a in self.sites:
            if gate is FailOn.VIOLATION:
                if a.guideline_status == GuidelineStatus.VIOLATION:
                    out.append(f"{a.site}: guideline violation ({a.guideline_text})")
                if a.breaks:
                    out.append(f"{a.site}: {len(a.breaks)} DICOM rule break(s)")
            elif gate is FailOn.DEGRADED and a.model is not None:
                if a.model.status == ModelStatus.DEGRADED:
                    out.append(f"{a.site}: {a.model.model} degraded at CR {a.model.site_cr:.3g}")
                elif a.model.status == ModelStatus.CANNOT_JUDGE:
                    out.append(f"{a.site}: {a.model.model} cannot judge ({a.model.note}): a loss "
                               f"at CR {a.model.site_cr:.3g} would go unseen")
            elif gate in DETECTABILITY_GATES:
                hit = [f"{f.name} {f.verdict}" for g in a.detectability for f in g.findings
                       if f.verdict in DETECTABILITY_GATES[gate]]
                if hit:
                    cr = ", ".join(f"{g.cr:g}" for g in a.detectability)
                    out.append(f"{a.site}: at CR {cr}: {', '.join(hit)}")
        return out


def run_audit(folders: Sequence[Path] = (), config: Path | None = None, *,
              site_map: Path | None = None, results: Path | None = None,
              model: Path | None = None, guideline: str | None = None,
              guidelines: Path | None = None, fail_on: FailOn | None = None,
              same_data: bool = False, detectability: DetectabilityMode = DetectabilityMode.QUICK,
              cache: Path | None = None, workers: int | None = None,
              progress: Callable[..., None] | None = None) -> Audit:
    """Audit the node of `config` (its sites, with their configured policies and models) and
    the DICOM `folders` (each a site named by `site_map`, CSV folder,site[,guideline], else by
    its own name; `model` is their deployed model), every site against `guideline` (a key of the
    table `guidelines`, default the built-in one; None: against all), the deployed models
    against the cross-CR `results` (`same_data`: the results are the sites' data whatever their
    fingerprint) and each site's highest CR against the model observers (`detectability`, the
    runs cached in `cache`, default `detectability.cache_folder()`, on `workers` processes,
    `progress(done, total, status)` as views finish).

    ValueError, before any work, for nothing to audit, a folder that does not exist, an unknown
    `guideline` or one without a ratio, a configuration, model file or guideline table that
    cannot be used, a gate on verdicts that are not measured, and, when `fail_on` asks for
    verdicts, `results` that cannot be read (without a gate: a problem); after the work, when a
    detectability gate meets a site whose detectability could not be judged."""
    if not folders and config is None:
        raise ValueError("nothing to audit: give DICOM folders and/or --config node.yaml")
    if fail_on is FailOn.DEGRADED and results is None:
        raise ValueError("--fail-on degraded judges the model at each site's CR: give --results "
                         "(a dicomcr cv --cross results folder)")
    if fail_on in DETECTABILITY_GATES and detectability is DetectabilityMode.OFF:
        raise ValueError(f"--fail-on {fail_on} judges detectability: not with --detectability off")
    for folder in folders:
        if not Path(folder).exists():
            raise ValueError(f"{folder} does not exist: no DICOM folder to audit there")
    problems: list[str] = []
    document = None
    if results is not None:
        try:
            document = read_results(results)
        except ValueError as exc:
            if fail_on is not None:  # a gate must not pass on a typo
                raise ValueError(f"{exc}; --fail-on {fail_on} needs it") from exc
            problems.append(f"{exc}; no model verdicts")
    table = load_guidelines(guidelines)
    known = [g.key for g in table]
    judged = [g.key for g in table if g.judged]
    if guideline and guideline not in known:
        raise ValueError(f"no guideline {guideline!r}; the table has {', '.join(known)}")
    if guideline and guideline not in judged:
        raise ValueError(f"guideline {guideline} gives no ratio (shown, never judged); judge "
                         f"against one of {', '.join(judged)}")
    deployed = _model_info(model) if model else None
    files: dict[str, list[Path]] = {}
    configured: dict[str, Policy | None] = {}
    models: dict[str, dict | None] = {}
    if config is not None:
        files, configured, models, said = node_sites(load_config(config), deployed)
        problems += said
    mapped: dict[str, str] = {}
    if folders:
        found, said, mapped = folder_images(folders, site_map)
        problems += said
        for site, paths in found.items():
            files.setdefault(site, []).extend(paths)
            models.setdefault(site, deployed)
    keys: dict[str, str | None] = {}
    for site in set(files) | set(configured):
        keys[site] = mapped.get(site, guideline)
        if keys[site] and keys[site] not in judged:
            why = f"guideline {keys[site]} gives no ratio" if keys[site] in known else \
                f"no guideline {keys[site]!r}"
            problems.append(f"site {site}: {why}; judged against all")
            keys[site] = None
    request = None if detectability is DetectabilityMode.OFF else DetectabilityRequest(
        detectability is DetectabilityMode.QUICK, cache_folder(cache), workers, progress)
    sites, said = audit_sites(files, configured, table, keys, document, models, same_data, request)
    if said and fail_on in DETECTABILITY_GATES:
        raise ValueError(f"{said[0]}; --fail-on {fail_on} needs it")
    return Audit(sites, problems + said, table)


def node_images(config: Config) -> tuple[dict[str, list[Path]], list[str]]:
    """{site: image files the node produced for it} from its job store, and problems."""
    store = Storage(Path(config.node.storage)).store
    if not store.is_file():
        return {}, [f"{store}: no job store (has the node run with this configuration?)"]
    with JobStore.open_readonly(store) as jobs:
        return jobs.outputs_by_site(ObjectKind.IMAGE,
                                    (InstanceState.TRANSCODED, InstanceState.DONE)), []


def node_sites(config: Config, deployed: dict | None = None
               ) -> tuple[dict[str, list[Path]], dict[str, Policy | None], dict[str, dict | None],
                          list[str]]:
    """A node's sites: {site: image files} from its job store, {site: configured policy},
    {site: deployed model metadata} (the site's model, else inference.model, else `deployed`)
    and problems. A configured model that cannot be read raises ModelFileError."""
    files, problems = node_images(config)
    default = config.inference.model if config.inference else None
    configured: dict[str, Policy | None] = {site.name: site.policy for site in config.sites}
    models = {}
    for site in config.sites:
        path = site.model or default
        models[site.name] = _model_info(path) if path else deployed
    return files, configured, models, problems


def _model_info(path: Path) -> dict:
    """The metadata of the model file `path` (ModelFileError when unreadable); torch is imported
    only when an audit names a model."""
    from ..models.modelfile import load_model

    return load_model(path)[1].__dict__


def folder_images(folders: Sequence[Path], site_map: Path | None
                  ) -> tuple[dict[str, list[Path]], list[str], dict[str, str]]:
    """{site: files} of DICOM folders (each must exist), problems, and {site: guideline key}
    where the site map names one. The site map (CSV folder,site[,guideline]) names the folders'
    sites, else the folder's own name is the site (said)."""
    named: dict[Path, str] = {}
    keys: dict[str, str] = {}
    problems = []
    if site_map is not None:
        try:
            with open(site_map, newline="") as handle:
                for number, row in enumerate(csv.DictReader(handle), start=2):
                    if not row.get("folder") or not row.get("site"):
                        problems.append(f"{site_map}:{number}: needs folder and site; skipped")
                        continue
                    named[Path(row["folder"]).resolve()] = row["site"]
                    if row.get("guideline"):
                        keys[row["site"]] = row["guideline"]
        except OSError as exc:
            raise ValueError(f"--site-map {site_map}: cannot read ({exc.strerror})") from exc
    out: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        site = named.get(Path(folder).resolve())
        if site is None:
            site = Path(folder).resolve().name
            problems.append(f"{folder}: not in the site map; audited as site {site!r}")
        out[site] += [path for path, _ in find_inputs(folder)]
    for folder in set(named) - {Path(f).resolve() for f in folders}:
        problems.append(f"site map names {folder} ({named[folder]}), which was not given")
    return dict(out), problems, keys
