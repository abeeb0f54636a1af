"""The experiments as library calls: train one model, test one, and run the cross-validation matrix.

`train_classifier`: split by patient 7:1:2, train with early stopping, choose the operating
threshold on validation, test at every CR, write the model file; `train` starts it the way the
process is asked to (here, under torchrun, or on N local processes). `evaluate`: a model file
tested on held-out breasts at every CR, optionally as a results folder. `run_cv`: every model of
the plan on every fold (resumable), each fold's network as a model file with its threshold, the
pooled metrics, tables, figures and optionally Grad-CAM scores. The commands (`dicomcr train`,
`evaluate`, `cv`), the demo and the tests call these; the commands parse and print. Training takes
the preprocessing without a canvas by default: the canvas is derived from the data (the paper's
30 % pitch, padded). `open_data` reads DATA as the commands take it: a folder, or a phantom cohort
to stream (`phantom.stream.StreamedCohort`), which `train` and `run_cv` generate into the cache
at the run's CRs first (`streamed`). Each refuses, before any work, too few patients of a class
for every side of the split to hold both classes, and an output path it could not write.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.cache import BreastInputs, Reach, cr_reach
from ..data.dataset import Breast, DatasetFormat, fingerprint, load_dataset, read_phantom_labels
from ..data.preprocess import Preprocessing
from ..dicom.source import InputError
from ..models import CNN3, Architecture, CNN3Spec, ResNet18, ResNet18Spec, pick_device
from ..models.modelfile import ModelFileError, ModelInfo, load_model, save_model
from ..models.resnet18 import imagenet_weights_path
from ..outputs import output_file, output_folder
from ..phantom.cohort import CohortSpec
from ..phantom.stream import StreamedCohort
from . import cv as cvlib
from .distributed import (
    TrainRequest,
    World,
    launch,
    operating_threshold_shared,
    predict_shared,
    train_model_distributed,
)
from .executors import CellExecutor, LocalExecutor
from .metrics import Estimate, auprc_bootstrap, auroc_delong
from .report import FIGURES, REPORT, write_figures
from .saliency import SaliencyRow, cv_saliency, input_mask
from .splits import split_patients
from .train import Samples, TrainOptions, operating_threshold, predict, train_model

CACHE_NAME = ".dicomcr-cache"  # the preprocessing cache's folder beside the data (`Data.cache`)


@dataclass(frozen=True)
class Events:
    """What a long run reports as it goes (every callback optional: the CLI draws its bars)."""

    note: Callable[[str], None] | None = None  # something the user should read
    preprocess: Callable[[int, int], None] | None = None  # (views done, views to do)
    epoch: Callable[[dict], None] | None = None  # {epoch, loss, val_auroc}
    fold: Callable[[cvlib.ModelPlan, cvlib.Fold, bool], None] | None = None  # (.., reused)

    def say(self, text: str) -> None:
        if self.note:
            self.note(text)


@dataclass(frozen=True)
class Network:
    """Which classifier to train; ResNet18 starts from ImageNet weights when they are on disk
    (`imagenet_weights`, else torch's cache; nothing is downloaded)."""

    architecture: Architecture = Architecture.CNN3
    imagenet_weights: Path | None = None


def _network(network: Network, events: Events) -> tuple[str, Path | None]:
    """(architecture name, ImageNet weights to start from or None), checked before any work."""
    if network.architecture is Architecture.CNN3:
        return network.architecture.value, None
    given = network.imagenet_weights
    if given is not None and not Path(given).is_file():
        raise ValueError(f"--imagenet-weights {given}: no such file")
    weights = Path(given) if given is not None else imagenet_weights_path()
    if not weights.is_file():
        events.say(f"ImageNet weights for ResNet18 not found at {weights} (nothing is "
                   "downloaded): training ResNet18 from scratch.")
        return network.architecture.value, None
    ResNet18(ResNet18Spec(imagenet=True)).load_imagenet(weights)  # fail now, not in a fold
    events.say(f"ResNet18 starts from the ImageNet weights in {weights}")
    return network.architecture.value, weights


def _builder(architecture: str, weights: Path | None, input_size: tuple[int, int]
             ) -> tuple[Callable[[], nn.Module], dict]:
    """(build, spec) of the network for inputs of `input_size`."""
    if architecture == Architecture.CNN3.value:
        spec = CNN3Spec(input_size=input_size)
        return (lambda: CNN3(spec)), spec.as_dict()
    plain = ResNet18Spec(input_size=input_size, imagenet=weights is not None)

    def build() -> ResNet18:
        net = ResNet18(plain)
        if weights is not None:
            net.load_imagenet(weights)
        return net

    return build, plain.as_dict()


@dataclass(frozen=True, eq=False)
class Data:
    """DATA of `dicomcr train` and `cv` (`open_data`): the breasts a folder's reader found, or a
    phantom cohort to stream; the cache to use when none is given (beside the data: in DATA, in
    the folder of a phantom.json, in the current folder for a `phantom:` spec); what to tell."""

    source: list[Breast] | StreamedCohort
    cache: Path
    name: str  # for results.json
    summary: str
    notes: tuple[str, ...] = ()


def open_data(data: str | Path, layout: DatasetFormat | str = DatasetFormat.PHANTOM,
              labels: Path | None = None, columns: str | None = None) -> Data:
    """DATA as the experiment commands take it: a phantom specification (`phantom:studies=N,...`,
    `CohortSpec.parse`, or the phantom.json of a cohort, `CohortSpec.read`), streamed into the
    cache, or a folder read by `load_dataset` with `layout`, `labels` and `columns`. ValueError
    (FileNotFoundError for a folder without its labels) in one line."""
    text = str(data)
    spec = None
    if text.lower().startswith("phantom:"):
        spec, cache = CohortSpec.parse(text), Path(CACHE_NAME)
    elif text.endswith(".json"):
        spec, cache = CohortSpec.read(Path(text)), Path(text).parent / CACHE_NAME
    if spec is not None:
        if layout != DatasetFormat.PHANTOM or labels is not None or columns is not None:
            raise ValueError("a phantom specification takes no --format, --labels or --columns")
        stream = StreamedCohort(spec)
        return Data(stream, cache, text, stream.describe())
    dataset = load_dataset(Path(text), layout, labels, columns)
    return Data(dataset.breasts, Path(text) / CACHE_NAME, text, dataset.summary(),
                tuple(dataset.notes()))


def streamed(data: list[Breast] | StreamedCohort, crs: list[float], preprocessing: Preprocessing,
             cache: Path, workers: int = 1, events: Events | None = None) -> list[Breast]:
    """The breasts of `data`: a list as it is; a phantom cohort streamed into `cache` first, its
    views preprocessed at the CRs of `crs` they reach (a study already there is not generated
    again), reporting views through `events.preprocess`. ValueError says why it failed."""
    if not isinstance(data, StreamedCohort):
        return data
    kept = list(reachable(data, crs).kept)
    try:
        return data.stream(kept, preprocessing, cache, workers, (events or Events()).preprocess)
    except (ValueError, OSError) as exc:
        raise ValueError(f"streaming the phantom cohort failed: {exc}") from exc


def reachable(breasts: list[Breast] | StreamedCohort, crs: list[float],
              events: Events | None = None) -> Reach:
    """The CRs of `crs` that every view of `breasts` (or of a streamed cohort) can be compressed
    at (`Reach.kept`).

    A CR out of reach for any view (small images cannot reach the highest CRs) is skipped for
    the whole dataset, with one line to the user: kept for the larger views only, it would train
    and test the models on other breasts at that CR than at the others, and the paired tests
    compare the same breasts. ValueError, naming the highest CR every view reaches, when no CR
    asked remains."""
    reach = breasts.reach(crs) if isinstance(breasts, StreamedCohort) else cr_reach(breasts, crs)
    if reach.skipped:
        named = ", ".join(f"{c:g}" for c in reach.skipped)
        if not reach.kept:
            raise ValueError(f"CR {named} is out of reach for this dataset's images: the highest "
                             f"CR every view reaches is {reach.highest} ({reach.views})")
        (events or Events()).say(
            f"CR {named} skipped: out of reach for some of this dataset's images; the highest "
            f"CR every view reaches is {reach.highest} ({reach.views}). A CR is used only when "
            "every view reaches it, so that all models see the same breasts; going on with CR "
            + ", ".join(f"{c:g}" for c in reach.kept) + ".")
    return reach


def preprocess(breasts: list[Breast], crs: list[float], preprocessing: Preprocessing,
               cache: Path, workers: int = 1, events: Events | None = None,
               executor: CellExecutor | None = None) -> BreastInputs:
    """The breasts' inputs at every CR (cached; what the cache lacks computed by `executor`,
    default here with `workers` processes), with a readable error when an image fails."""
    try:
        return (executor or LocalExecutor()).preprocess(breasts, crs, preprocessing, cache,
                                                        workers, (events or Events()).preprocess)
    except (InputError, ValueError, OSError) as exc:
        raise ValueError(f"preprocessing failed: {exc}") from exc


@dataclass(frozen=True)
class TrainedModel:
    """What `train_classifier` did: the model file, its metadata, and how it tested."""

    path: Path
    info: ModelInfo
    split: tuple[int, int, int]  # patients in train / validation / test
    best_epoch: int
    validation_auroc: float
    threshold: float
    threshold_rule: str
    test: dict[float, Estimate | str] = field(default_factory=dict)  # AUROC, or why none


def train_classifier(breasts: list[Breast], crs: list[float], out: Path, cache: Path, *,
                     network: Network | None = None, options: TrainOptions | None = None,
                     preprocessing: Preprocessing | None = None, workers: int = 1,
                     events: Events | None = None) -> TrainedModel:
    """Train at one CR or a CR mixture (`crs`) on a 7:1:2 patient split; write the model file
    `out` with its input geometry, operating threshold and test AUROC per CR. None: defaults
    (CNN3, `TrainOptions()`, the paper's preprocessing with the canvas from the data).

    Under torchrun with several processes (WORLD_SIZE > 1) it trains with DDP (`distributed`):
    every rank returns the same `TrainedModel`, rank 0 alone writes `out` and reports `events`."""
    network, options = network or Network(), options or TrainOptions()
    preprocessing, events = preprocessing or Preprocessing(), events or Events()
    world = World.from_env()
    if world is not None and not world.leader:
        events = Events()  # one rank speaks
    architecture, weights = _network(network, events)
    labels = np.array([b.malignant for b in breasts])
    train_ids, val_ids, test_ids = split_patients([b.patient_id for b in breasts],
                                                  labels.tolist(), options.seed)
    output_file(out)  # a bad path is said now, not after training
    crs = list(reachable(breasts, crs, events).kept)
    device = world.start(options) if world is not None else torch.device("cpu")
    if world is not None and world.local_rank != 0:
        world.barrier()  # each machine's first process fills the cache, the others then read it
    inputs = preprocess(breasts, crs, preprocessing, cache, workers, events)
    if world is not None and world.local_rank == 0:
        world.barrier()
    p = inputs.preprocessing
    build, spec = _builder(architecture, weights, p.model_input)

    def rows(ids: set[str]) -> np.ndarray:
        return np.array([i for i, b in enumerate(breasts) if b.patient_id in ids], dtype=int)

    validation = Samples.of(inputs.arrays, labels, rows(val_ids), crs)
    training = Samples.of(inputs.arrays, labels, rows(train_ids), crs)
    if world is None:
        result = train_model(build, training, validation, options, events.epoch)
        threshold, rule = operating_threshold(result.model, validation)

        def score(samples: Samples) -> np.ndarray:
            return predict(result.model, samples, device)
    else:
        result = train_model_distributed(build, training, validation, options, world,
                                         events.epoch)
        threshold, rule = operating_threshold_shared(result.model, validation, world, device)

        def score(samples: Samples) -> np.ndarray:
            return predict_shared(result.model, samples, world, device)
    test_rows = rows(test_ids)
    report: dict = {"best_epoch": result.best_epoch, "val_auroc": result.best_validation_auroc,
                    "threshold_rule": rule,
                    "split": [len(train_ids), len(val_ids), len(test_ids)]}
    tested: dict[float, Estimate | str] = {}
    for c in crs:
        scores = score(Samples.of(inputs.arrays, labels, test_rows, [c]))
        try:
            tested[c] = auroc_delong(labels[test_rows], scores)
        except ValueError as exc:  # a test split too small for an interval: said, not hidden
            tested[c] = str(exc)
            continue
        report[f"test_auroc_cr{c:g}"] = [tested[c].value, tested[c].low, tested[c].high]
    info = ModelInfo(architecture=architecture, spec=spec, preprocessing=p.as_dict(),
                     trained_crs=list(crs), data_fingerprint=fingerprint(breasts),
                     threshold=threshold, validation=report)
    if world is None or world.leader:
        save_model(result.model.cpu(), info, out)
    if world is not None:
        world.stop()  # after rank 0 wrote the file
    return TrainedModel(Path(out), info, (len(train_ids), len(val_ids), len(test_ids)),
                        result.best_epoch, result.best_validation_auroc, threshold, rule, tested)


def train(breasts: list[Breast] | StreamedCohort, crs: list[float], out: Path, cache: Path, *,
          nproc: int = 1, network: Network | None = None, options: TrainOptions | None = None,
          preprocessing: Preprocessing | None = None, workers: int = 1,
          events: Events | None = None) -> TrainedModel:
    """`dicomcr train`: `train_classifier`, started the way the process is asked to. With `nproc`
    1, in this process, or as one rank of DDP when torchrun started it (each machine's torchrun
    runs `dicomcr train`, README); with `nproc` >= 2 outside torchrun, on `nproc` processes of
    this machine that it starts under torchrun (`distributed.launch`), their lines passed to
    `events.note`. A streamed phantom cohort is streamed here first (`streamed`; under a
    torchrun of several machines, by each). ValueError, before any work, for an `nproc` that
    cannot be honoured, a device this machine lacks and an output it cannot write."""
    network, options = network or Network(), options or TrainOptions()
    events = events or Events()
    if nproc != 1 and (World.from_env() is not None or nproc < 1):
        raise ValueError(f"--nproc {nproc}: give N >= 2, outside torchrun (under torchrun its own "
                         "--nproc-per-node says it)")
    pick_device(options.device)
    output_file(out)
    if isinstance(breasts, StreamedCohort):  # too few patients: said before any study is made
        split_patients(*breasts.patients(), options.seed)
    breasts = streamed(breasts, crs, preprocessing or Preprocessing(), cache, workers, events)
    if nproc == 1:
        return train_classifier(breasts, crs, out, cache, network=network, options=options,
                                preprocessing=preprocessing, workers=workers, events=events)
    events.say(f"training on {nproc} processes (torchrun, DistributedDataParallel)")
    return launch(TrainRequest(breasts, crs, out, cache, network, options,
                               preprocessing or Preprocessing(), workers), nproc, echo=events.note)


def quick_model(cohort: Path, out: Path, epochs: int, cr: float = 20.0,
                events: Events | None = None) -> TrainedModel:
    """The demo's quick CNN3 at `cr`, from a small phantom cohort: on the canvas of that cohort's
    views, shrunk to 256 x 256 for speed; it classifies studies of the same geometry (the demo
    sends small studies; a full-size one does not fit its canvas and is refused). A model for
    the plumbing, not a reproduction of the paper."""
    return train_classifier(read_phantom_labels(cohort), [cr], out, cohort / CACHE_NAME,
                            options=TrainOptions(epochs=epochs),
                            preprocessing=Preprocessing(input_size=(256, 256)), workers=2,
                            events=events)


@dataclass(frozen=True, eq=False)
class TestedModel:
    """What `evaluate` measured: the probability of every breast at every test CR, and per CR
    the AUROC (DeLong 95 % CI) and AUPRC (bootstrap 95 % CI), or why they were not computed."""

    model: Path
    info: ModelInfo
    breasts: list[Breast]
    probabilities: dict[float, np.ndarray]  # test CR -> one per breast, in `breasts`' order
    metrics: dict[float, tuple[Estimate, Estimate] | str]  # test CR -> (AUROC, AUPRC) or why not
    folder: Path | None = None  # the results folder written, when one was asked for


def evaluate(model: Path, breasts: list[Breast], crs: list[float] | None, cache: Path, *,
             out: Path | None = None, predictions: Path | None = None, seed: int = 0,
             source: str = "", workers: int = 1, events: Events | None = None) -> TestedModel:
    """The model file `model` tested on every breast of `breasts` (held out from its training) at
    every CR of `crs` (None: the CRs it was trained at; a CR out of the images' reach is skipped,
    said through `events`), with the preprocessing it records. `predictions`: also write every
    probability as CSV; `out`: also write a `dicomcr cv --cross` results folder with one fold (the
    whole held-out set), which `dicomcr audit --results` and `dicomcr report` read; `seed`: the
    AUPRC bootstrap's. The command `dicomcr evaluate` and the demo call this.

    ValueError (a ModelFileError for the model file) before any work for what cannot be read
    or written, and for a dataset no asked CR reaches."""
    events = events or Events()
    network, info = load_model(model)
    if predictions is not None:
        output_file(predictions)
    if out is not None:
        output_folder(out)
    crs = list(reachable(breasts, crs or sorted(set(info.trained_crs)), events).kept)
    inputs = preprocess(breasts, crs, Preprocessing.from_dict(info.preprocessing), cache,
                        workers, events)
    labels = np.array([b.malignant for b in breasts])
    everyone = np.arange(len(breasts))
    probabilities = {c: predict(network, Samples.of(inputs.arrays, labels, everyone, [c]),
                                torch.device("cpu")) for c in crs}
    metrics: dict[float, tuple[Estimate, Estimate] | str] = {}
    for c, scores in probabilities.items():
        try:
            metrics[c] = (auroc_delong(labels, scores), auprc_bootstrap(labels, scores, seed))
        except ValueError as exc:  # one class only, too few breasts: said in the table
            metrics[c] = f"not computed: {exc}"
    tested = TestedModel(Path(model), info, breasts, probabilities, metrics,
                         Path(out) if out is not None else None)
    if predictions is not None:
        _write_predictions(tested, Path(predictions))
    if out is not None:
        _write_held_out(tested, Path(out), seed, source)
    return tested


def _write_predictions(tested: TestedModel, path: Path) -> None:
    """One line per breast and test CR: patient_id, laterality, malignant, cr, probability."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("patient_id", "laterality", "malignant", "cr", "probability"))
        for c, scores in tested.probabilities.items():
            writer.writerows((b.patient_id, b.laterality, b.malignant, f"{c:g}", f"{s:.6f}")
                             for b, s in zip(tested.breasts, scores, strict=True))


def _write_held_out(tested: TestedModel, out: Path, seed: int, source: str) -> None:
    """`tested` as a `dicomcr cv --cross` results folder with one fold: the held-out set."""
    info, breasts = tested.info, tested.breasts
    trained = tuple(info.trained_crs)
    plan = cvlib.ModelPlan(cvlib.model_name(trained), trained,
                           tuple(sorted(tested.probabilities)))
    labels = np.array([b.malignant for b in breasts])
    fold = cvlib.FoldResult(
        model=plan.name, fold=0, keys=tuple(b.key for b in breasts),
        labels=tuple(int(v) for v in labels),
        probabilities={f"{c:g}": scores.tolist() for c, scores in tested.probabilities.items()},
        best_epoch=int(info.validation.get("best_epoch", 0)),
        validation_auroc=float(info.validation.get("val_auroc", float("nan"))),
        threshold=info.threshold, threshold_rule=info.validation.get("threshold_rule", ""),
        history=[], identity="held-out")
    try:
        rows = cvlib.summarise([plan], [fold], seed=seed)
    except ValueError as exc:
        raise ValueError(f"the metrics cannot be computed: {exc}") from exc
    finding_of = cvlib.findings_of(breasts)
    findings = cvlib.summarise_findings([plan], [fold], finding_of)
    cvlib.write_tables(out, rows, [fold], {
        "data": source, "data_fingerprint": fingerprint(breasts),
        "architecture": info.architecture, "spec": info.spec,
        "preprocessing": info.preprocessing, "crs": list(plan.test_crs), "cross": True,
        "augment": False, "folds": 1, "breasts": len(breasts),
        "patients": len({b.patient_id for b in breasts}), "malignant": int(labels.sum()),
        "model": str(tested.model), "model_data_fingerprint": info.data_fingerprint,
        "evaluation": "the deployed model file, tested once on held-out studies (no folds)"},
        findings=findings, finding_of=finding_of)


@dataclass(frozen=True)
class CVRun:
    """What `run_cv` produced: `rows` carry the paired tests; `findings` the AUROC per malignant
    finding type (empty, with `findings_note` saying why, when the data have none)."""

    plans: list[cvlib.ModelPlan]
    results: list[cvlib.FoldResult]
    rows: list[cvlib.Row]
    findings: list[cvlib.FindingRow]
    findings_note: str
    saliency: list[SaliencyRow] | None
    meta: dict
    written: list[Path]
    reused: int  # folds finished before and loaded


def run_cv(breasts: list[Breast] | StreamedCohort, crs: list[float], out: Path, cache: Path, *,
           folds: int = 5,
           cross: bool = False, augment: bool = False, saliency: bool = False,
           network: Network | None = None, options: TrainOptions | None = None,
           preprocessing: Preprocessing | None = None, workers: int = 1,
           events: Events | None = None, source: str = "",
           executor: CellExecutor | None = None) -> CVRun:
    """Table 1 (each M-CRx at x), with `cross` Table 2 (every model at every CR), with `augment`
    Fig. 4 (M-CR1-x); `saliency` scores Grad-CAM against the lesion masks. `breasts` may be a
    phantom cohort to stream into `cache` (`streamed`), at the CRs of the run. Results go to `out`:
    finished folds there (same inputs) are reused, not retrained, whichever executor computed
    them. None: defaults as in `train_classifier`; `source` names the data in results.json;
    `executor` computes the cache and the cells (default `LocalExecutor()`: here, one after
    another; a `RayExecutor` wants `cache` and `out` on storage every node sees)."""
    network, options = network or Network(), options or TrainOptions()
    preprocessing, events = preprocessing or Preprocessing(), events or Events()
    pick_device(options.device)  # a device this machine lacks: said before any work
    reach = reachable(breasts, crs, events)
    crs = list(reach.kept)
    plans = cvlib.plan_models(crs, cross, augment)
    architecture, weights = _network(network, events)
    if isinstance(breasts, StreamedCohort):  # too few patients: said before any study is made
        cvlib.cv_folds(*breasts.patients(), folds, options.seed)
    output_folder(out)
    breasts = streamed(breasts, crs, preprocessing, cache, workers, events)
    patient_of = [b.patient_id for b in breasts]
    labels = np.array([b.malignant for b in breasts])
    fold_list = cvlib.cv_folds(patient_of, labels.tolist(), folds, options.seed)
    inputs = preprocess(breasts, crs, preprocessing, cache, workers, events, executor)
    p = inputs.preprocessing
    masks = {}
    if saliency:
        masks = {i: m for i, b in enumerate(breasts) if b.malignant
                 for m in [input_mask(b, p)] if m is not None and m.any()}
        if not masks:
            raise ValueError("--saliency needs lesion masks (a phantom cohort, or <image>_mask.png "
                             "beside the images); this dataset has none for its malignant breasts")
    build, spec = _builder(architecture, weights, p.model_input)
    data_id = fingerprint(breasts)
    results_dir = cvlib.ResultsDir(out)

    def identity(plan: cvlib.ModelPlan, fold: cvlib.Fold) -> str:
        return cvlib.fold_identity(plan, fold, architecture, spec, options, p.as_dict(), data_id)

    reused = 0

    def on_fold(plan: cvlib.ModelPlan, fold: cvlib.Fold, done: bool) -> None:
        nonlocal reused
        reused += done
        if events.fold:
            events.fold(plan, fold, done)

    def on_model(plan: cvlib.ModelPlan, result: cvlib.FoldResult, network: nn.Module) -> None:
        path = results_dir.model_path(plan.name, result.fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(network, ModelInfo(
            architecture=architecture, spec=spec, preprocessing=p.as_dict(),
            trained_crs=list(plan.train_crs), data_fingerprint=data_id,
            threshold=result.threshold,
            validation={"best_epoch": result.best_epoch, "val_auroc": result.validation_auroc,
                        "fold": result.fold, "threshold_rule": result.threshold_rule}), path)

    try:
        results = cvlib.cross_validate(plans, fold_list, [b.key for b in breasts], patient_of,
                                       inputs.arrays, labels, build, options, identity,
                                       results_dir, on_fold, events.epoch, on_model, executor)
    except ValueError as exc:
        raise ValueError(f"training failed: {exc}") from exc
    finding_of = cvlib.findings_of(breasts)
    try:
        rows = cvlib.summarise(plans, results, options.seed)
        findings = cvlib.summarise_findings(plans, results, finding_of)
    except ValueError as exc:
        raise ValueError(f"the metrics cannot be computed: {exc}") from exc
    meta = {"data": source, "data_fingerprint": data_id, "architecture": architecture,
            "spec": spec, "preprocessing": p.as_dict(), "options": asdict(options),
            "folds": folds, "crs": list(crs), "crs_skipped": list(reach.skipped),
            "views_reach": reach.views, "cross": cross, "augment": augment,
            "breasts": len(breasts), "patients": len(set(patient_of)),
            "malignant": int(labels.sum())}
    scored = None
    if saliency:
        def load(model: str, fold: int) -> nn.Module:
            try:
                return load_model(results_dir.model_path(model, fold))[0]
            except ModelFileError as exc:
                raise ValueError(f"{exc}: the fold's network is needed for --saliency; remove "
                                 f"{results_dir.root / 'folds' / model} to train it again") from exc

        scored = cv_saliency(plans, results, [b.key for b in breasts], inputs.arrays, masks, load)
    figures = write_figures(out, plans, rows, results, findings, architecture)
    written = [*cvlib.write_tables(out, rows, results, meta, scored, findings, finding_of,
                                   figures), *figures]
    stale = cvlib.remove_stale(out, [*cvlib.TABLES, *FIGURES, REPORT], written)
    if stale:
        events.say(f"removed from {out}, left by an earlier run and not part of this one: "
                   f"{', '.join(stale)} (its finished folds stay in {out / 'folds'} for reuse)")
    return CVRun(plans, results, rows, findings, cvlib.findings_note(findings, finding_of), scored,
                 meta, written, reused)
