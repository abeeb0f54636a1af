"""`dicomcr demo`: the whole product on embedded defaults, in one folder, in a few minutes.

A small phantom cohort trains a quick CNN3 at CR 20 (reused when the folder has one); Orthanc is
started on free loopback ports as the PACS (else a local archive folder, said plainly); the node
serves two sites at different CRs with inference; four small phantom studies (the geometry the
quick model was trained on) are sent with the library's C-STORE SCU; the demo waits until
everything is transcoded, classified and forwarded, then summarises: what arrived where,
achieved CRs, probabilities, saliency PNGs, the audit. Servers are stopped on exit and on Ctrl-C.

The audit judges the model at each site's CR: before the node starts, the demo tests the quick
model at CR 1 and at both sites' CRs on held-out phantom studies and writes the results folder
that `dicomcr audit --results` reads (AUROC with DeLong's CI, AUPRC with a bootstrap CI). It
also judges what each site's CR takes away from each finding type, by the model observers on
phantom views (the quick task: about half a minute per vendor and CR the first time, cached in
$DICOMCR_DETECTABILITY_CACHE or ~/.cache/dicomcr/detectability afterwards).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from rich.console import Group
from rich.table import Table
from rich.text import Text

from dicomcr.audit.sites import Audit, run_audit
from dicomcr.audit.verdicts import DetectabilityMode
from dicomcr.config import Config
from dicomcr.dicom.report import read_probabilities
from dicomcr.net.scu import Peer, send

from .node import Node
from .orthanc import LocalOrthanc, PeerError, find_orthanc, free_port

SITES = (("hospital-a", "MG_A", 20.0), ("hospital-b", "MG_B", 100.0))
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


@dataclass
class DemoSummary:
    folder: Path
    destination: str  # the Orthanc web address, or the archive folder
    arrived: dict[str, int] = field(default_factory=dict)  # what the destination holds, by kind
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)  # patient -> breast
    pngs: list[Path] = field(default_factory=list)
    config: Path | None = None
    notes: list[str] = field(default_factory=list)
    results: Path | None = None  # the model tested at CR 1 and each site's CR (for the audit)
    audit: Audit | None = None  # the demo's sites, with the model verdict at each site's CR

    @property
    def audit_command(self) -> str:
        """The command line that audits the demo's node again."""
        results = f" --results {self.results}" if self.results is not None else ""
        return f"dicomcr audit --config {self.config}{results}"


Step = Callable[[str], contextlib.AbstractContextManager]


def _train_model(folder: Path, step: Step, train_studies: int, epochs: int) -> Path:
    """A quick CNN3 at CR 20 on a small phantom cohort (reused when already there)."""
    from dicomcr.experiments.run import quick_model
    from dicomcr.models.modelfile import ModelFileError, load_model
    from dicomcr.phantom import CohortSpec, write_cohort

    model = folder / "models" / "cnn3-cr20.dcmcr"
    try:
        load_model(model)
        return model  # a model from an earlier run, still readable: reused
    except (ModelFileError, OSError):  # none yet, or one this version cannot read: trained anew
        pass
    cohort = folder / "training-cohort"
    if not (cohort / "labels.csv").is_file():
        with step(f"phantom: {train_studies} small studies to train on"):
            write_cohort(CohortSpec(n_studies=train_studies, seed=7, size="small"), cohort,
                         workers=2, force=True)
    model.parent.mkdir(parents=True, exist_ok=True)
    with step(f"train: CNN3 at CR 20, {epochs} epochs"):
        try:
            quick_model(cohort, model, epochs)
        except ValueError as exc:
            raise RuntimeError(f"training the demo model failed: {exc}") from exc
    return model


def _test_model(folder: Path, model: Path, step: Step, studies: int) -> Path:
    """The model at CR 1 and at each site's CR on held-out phantom studies (another seed than
    the training cohort's), as the results folder the audit reads for its model verdicts."""
    from dicomcr.data.dataset import load_dataset
    from dicomcr.experiments.cv import model_name
    from dicomcr.experiments.run import evaluate
    from dicomcr.models.modelfile import load_model
    from dicomcr.phantom import CohortSpec, write_cohort

    cohort = folder / "test-cohort"
    try:
        breasts = load_dataset(cohort).breasts
    except (FileNotFoundError, ValueError):  # not written yet (or by an older layout)
        with step(f"phantom: {studies} small held-out studies to test the model on"):
            write_cohort(CohortSpec(n_studies=studies, seed=13, size="small"), cohort, workers=2,
                         force=True)
        breasts = load_dataset(cohort).breasts
    crs = sorted({1.0, *(cr for _, _, cr in SITES)})
    name = model_name(tuple(load_model(model)[1].trained_crs))
    with step(f"test: {name} at CR {', '.join(f'{c:g}' for c in crs)} on {len(breasts)} "
              "held-out breasts"):
        evaluate(model, breasts, crs, cohort / ".dicomcr-cache", out=folder / "results",
                 source=str(cohort), workers=2)
    return folder / "results"


def _config(folder: Path, model: Path, destination: dict) -> Config:
    return Config.model_validate({
        "node": {"ae_title": "DICOMCR", "host": "127.0.0.1", "port": free_port(),
                 "storage": str(folder / "node"), "http_port": free_port(), "workers": 2,
                 "stable_seconds": 5},
        "sites": [{"name": name, "calling_ae": [ae], "cr": cr, "model": str(model)}
                  for name, ae, cr in SITES],
        "destinations": {"pacs": destination},
        "forward": {"to": "pacs", "retry_initial_seconds": 0.5, "retry_max_seconds": 5},
    })


@contextlib.contextmanager
def _running(config: Config) -> Iterator[Node]:
    node = Node(config)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def run_demo(folder: Path, step: Step, studies: int = 4, train_studies: int = 80,
             epochs: int = 8, on_summary: Callable[[DemoSummary], None] | None = None,
             test_studies: int = 30) -> DemoSummary:
    """The demo, start to end; `step(label)` wraps each long step (progress). `on_summary` is
    called while Orthanc still runs (to show it, or to wait for the user); then all stops.
    `test_studies`: small held-out studies the model is tested on for the audit."""
    from dicomcr.data.dataset import PHANTOM_DICOM
    from dicomcr.phantom import CohortSpec, write_cohort

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    model = _train_model(folder, step, train_studies, epochs)
    results = _test_model(folder, model, step, test_studies)
    send_cohort = folder / "studies"
    if not (send_cohort / "labels.csv").is_file() or not (send_cohort / PHANTOM_DICOM).is_dir():
        with step(f"phantom: {studies} small studies to send (the model's geometry)"):
            write_cohort(CohortSpec(n_studies=studies, seed=11, size="small"), send_cohort,
                         workers=2, force=True)
    orthanc = None
    binary = find_orthanc()
    notes = []
    if binary:
        with step("Orthanc: starting the PACS on loopback"):
            orthanc = LocalOrthanc(folder / "orthanc", binary)
        destination = {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": orthanc.aet}
    else:
        notes.append("Orthanc is not installed (apt-get install orthanc): the node archives into "
                     f"{folder / 'archive'} instead")
        destination = {"folder": str(folder / "archive")}
    try:
        config = _config(folder, model, destination)
        summary = DemoSummary(folder, orthanc.web if orthanc else str(folder / "archive"),
                              notes=notes, results=results)
        with _running(config) as node:
            patients = sorted(p for p in (send_cohort / PHANTOM_DICOM).iterdir() if p.is_dir())
            with step(f"send: {len(patients)} studies to the node (two sites)"):
                for index, patient in enumerate(patients):
                    _, ae, _ = SITES[index % len(SITES)]
                    peer = Peer("127.0.0.1", config.node.port, "DICOMCR", ae)
                    failed = [r for r in send(peer, sorted(patient.glob("*.dcm"))) if not r.ok]
                    if failed:
                        raise RuntimeError(f"{patient.name}: {failed[0].error}")
            with step("node: transcoding, classifying, forwarding"):
                _wait(node, len(patients))
            summary.config = _save_config(config, folder)
        with step("audit: the sites, and the model observers at each site's CR (quick; cached)"):
            summary.audit = run_audit(config=summary.config, results=results,
                                      detectability=DetectabilityMode.QUICK)
        summary.arrived = _arrived(orthanc, folder / "archive")
        summary.probabilities, summary.pngs = _results(folder / "node" / "derived", folder)
        if on_summary is not None:
            on_summary(summary)
        return summary
    finally:
        if orthanc is not None:
            orthanc.stop()


def _wait(node: Node, studies: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = node.health()
        states = health["studies"]
        done = states.get("inferred", 0) + states.get("failed", 0) + states.get("skipped", 0)
        if health["queue_depth"] == 0 and done >= studies:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the node did not finish within {timeout:.0f} s: {node.health()}")


def _save_config(config: Config, folder: Path) -> Path:
    import yaml

    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def _arrived(orthanc: LocalOrthanc | None, archive: Path) -> dict[str, int]:
    if orthanc is not None:
        classes = [orthanc.get(f"/instances/{i}/simplified-tags")["SOPClassUID"]
                   for i in orthanc.get("/instances")]
    else:
        classes = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID)
                   for p in archive.rglob("*.dcm")]
    kinds = {SC_CLASS: "saliency captures", SR_CLASS: "structured reports"}
    out: dict[str, int] = {}
    for uid in classes:
        kind = kinds.get(uid, "mammograms (JPEG 2000)")
        out[kind] = out.get(kind, 0) + 1
    return out


def _results(derived: Path, folder: Path) -> tuple[dict[str, dict[str, float]], list[Path]]:
    """Probabilities from each study's SR; each SC rendered as a PNG for a quick look."""
    probabilities, pngs = {}, []
    out = folder / "saliency"
    out.mkdir(exist_ok=True)
    for sr in sorted(derived.rglob("SR.dcm")):
        report = pydicom.dcmread(sr)
        probabilities[str(report.PatientID)] = read_probabilities(report)
        for sc in sorted(sr.parent.glob("SC_*.dcm")):
            ds = pydicom.dcmread(sc)
            path = out / f"{ds.PatientID}_{sc.stem[3:]}.png"
            Image.fromarray(np.asarray(ds.pixel_array)).save(path)
            pngs.append(path)
    return probabilities, pngs


def summary_view(summary: DemoSummary) -> Group:
    """What the demo did, then the audit of its sites with the model verdict and the observers'
    detectability at each site's CR, readable at 80 columns (a log, CI, a small window): folders
    (inside the demo folder, relative to it), what arrived at the PACS, the probabilities, the
    saliency PNGs, the model's test."""
    from dicomcr.audit.report import terminal_table

    def inside(path: Path | None) -> str:
        path = Path(path or "")
        return str(path.relative_to(summary.folder) if path.is_relative_to(summary.folder) else path)

    table = Table(title="dicomcr demo", show_header=False, box=None, padding=(0, 1, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # only a path longer than the line is folded
    table.add_row("folder", str(summary.folder))
    table.add_row("PACS", summary.destination)
    table.add_row("arrived", ", ".join(f"{v} {k}" for k, v in sorted(summary.arrived.items())))
    for number, (patient, values) in enumerate(sorted(summary.probabilities.items())):
        table.add_row("P(malignant)" if number == 0 else "", f"{patient}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(values.items())))
    table.add_row("saliency PNGs", f"{len(summary.pngs)} in {inside(summary.folder / 'saliency')}")
    table.add_row("node config", inside(summary.config))
    if summary.results is not None:
        meta = json.loads((summary.results / "results.json").read_text())["meta"]
        table.add_row("model tested", f"{inside(summary.results)}: at CR "
                      f"{', '.join(f'{c:g}' for c in meta['crs'])} on {meta['breasts']} "
                      f"held-out breasts ({meta['malignant']} malignant)")
    audit = terminal_table(summary.audit.sites if summary.audit else [], "Audit of the demo's sites")
    again = Text(f"The same audit, with --json or --html: {summary.audit_command}")
    return Group(table, Text(), audit, Text(), again)


__all__ = ["DemoSummary", "PeerError", "run_demo", "summary_view"]
