"""The library's commands (`commands`): each parses, calls one library function and prints; a refusal
of the library (ValueError) is one line and exit 2 (`refused`). `make_app` composes command groups with
--version (Typer's `add_typer`): `app` is the library's alone (`python -m dicomcr`); services/cli.py adds
the node's commands for the `dicomcr` console script."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dicomcr import __version__
from dicomcr.audit.verdicts import DetectabilityMode, FailOn
from dicomcr.codec.j2k import parse_crs
from dicomcr.data.dataset import DatasetFormat, load_dataset
from dicomcr.experiments.placement import Executor
from dicomcr.models import Architecture, Device
from dicomcr.net import scu
from dicomcr.outputs import output_file
from dicomcr.phantom import CohortSpec, Difficulty, write_cohort
from dicomcr.phantom.cohort import DifficultyName, Size, Vendor
from dicomcr.transcode import Ladder, find_inputs, transcode_table, transcode_tree

HELP = "dicomcr: JPEG 2000 at exact compression ratios for mammography, as a DICOM toolkit."
commands = typer.Typer()  # no callback of its own: it is merged into each app
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dicomcr {__version__}")
        raise typer.Exit()


def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """The options of the command line itself (--version)."""


def make_app(help_text: str, *groups: typer.Typer) -> typer.Typer:
    """A command line with --version and the commands of `groups`, merged (`add_typer`)."""
    app = typer.Typer(help=help_text, no_args_is_help=True, add_completion=False)
    app.callback()(_main)
    for group in groups:
        app.add_typer(group)
    return app


app = make_app(f"{HELP} The library's commands; the node's (serve, worker, status, retry, conformance, "
               "demo) are in the `dicomcr` command and `python -m services`.", commands)


def fail(message: str) -> NoReturn:
    """Say what is wrong (whole lines, no markup from the message) and exit with status 2."""
    console.print("[bold red]error:[/] ", end="")
    console.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@contextmanager
def refused(*also: type[Exception]) -> Iterator[None]:
    """The library's refusals inside the block (ValueError and `also`) as one line, exit 2."""
    try:
        yield
    except (ValueError, *also) as exc:
        fail(str(exc))


def check_writable(*paths: Path | None) -> None:
    """Exit 2 now, in one line, when an output file given could not be written after the work."""
    with refused():
        for path in filter(None, paths):
            output_file(path)


def _choice(kind: type[StrEnum], what: str, text: str, *names: str) -> Any:
    """A typer.Option (`names`, help `text`) taking the values of the enum `kind`; a value out of
    it is refused in the library's words ("unknown vendor 'x'; choose one of ...")."""
    def parse(value: object) -> StrEnum:
        try:
            return value if isinstance(value, kind) else kind(value)
        except ValueError:
            raise typer.BadParameter(f"unknown {what} {value!r}; choose one of "
                                     f"{', '.join(kind)}") from None

    return typer.Option(*names, help=text, parser=parse, metavar=f"[{'|'.join(kind)}]")


def _bars() -> Progress:
    """The command line's progress bars; a task starts hidden (`_meter`): a refused run prints one line."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(), console=console)


def _meter(bar: Progress, name: str, unit: str) -> Callable[..., None]:
    """A hidden task of `bar`, shown at its first report: (done, total, status=""), None keeping a count."""
    task = bar.add_task(name, total=None, unit=unit, status="", visible=False)
    return lambda done, total, status="": bar.update(task, completed=done, total=total, status=status,
                                                     visible=True)


def _say(text: str) -> None:
    """A note on stderr, never folded: a path in it stays one piece to copy from a log."""
    console.print(text, style="yellow", markup=False, highlight=False, soft_wrap=True)


def path_line(text: str, err: bool = True) -> None:
    """A line that names a file (stderr, or stdout with err=False), never folded at the width."""
    (console if err else Console()).print(text, markup=False, highlight=False, soft_wrap=True)


def _workers(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


WorkersOpt = Annotated[int, typer.Option(help="Worker processes; default: all cores.")]
CR_FORMS = ("repeatable; each a CR, a list '1,20,1000', a range of the paper's CRs '1-11000' or 'paper' "
            "(1 and the paper's ten lossy CRs); 1 = the original")


def _cr_option(what: str) -> Any:
    """The one `--cr` option: repeatable, each value a CR, a comma list, a range or 'paper'."""
    return typer.Option("--cr", help=f"{what} ({CR_FORMS}).")


def _crs(values: list[str]) -> list[float]:
    """The CRs named by repeated `--cr` values (see dicomcr.codec.j2k.parse_crs), or exit 2."""
    with refused():
        return parse_crs(values)


@commands.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Folder to write the cohort into.")],
    studies: Annotated[int, typer.Option("--studies", "-n", help="Number of 4-view studies.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same files.")] = 0,
    size: Annotated[Size, _choice(Size, "size", "full (the devices' sizes) or small (1/4).")] = Size.FULL,
    vendor: Annotated[Vendor, _choice(Vendor, "vendor", "hologic, ge or mixed (alternate).")] = Vendor.MIXED,
    workers: WorkersOpt = 0,
    difficulty: Annotated[DifficultyName, _choice(DifficultyName, "difficulty", (
        "Lesion difficulty: physical (the physics alone, the default) or conspicuous (the earlier "
        "default: masses x3, calcifications x8, sizes x2, beyond the detector's range)."))
    ] = DifficultyName.PHYSICAL,
    force: Annotated[bool, typer.Option("--force", help="Replace a cohort already in OUT (its dicom/, "
                                        "masks/, labels.csv, phantom.json).")] = False,
) -> None:
    """Write a synthetic four-view screening mammography cohort with lesion masks and labels.csv.

    OUT/dicom holds the DICOM files and nothing else (send it whole); OUT/masks the lesion masks.
    """
    from dicomcr.experiments.tables import facts

    with refused(), _bars() as bar:
        spec = CohortSpec(n_studies=studies, seed=seed, size=size, vendor=vendor,
                          difficulty=Difficulty.named(difficulty))
        summary = write_cohort(spec, out, _workers(workers), _meter(bar, "phantom", "studies"), force)
    Console().print(facts("Phantom cohort", summary.facts()))


@commands.command()
def transcode(
    source: Annotated[Path, typer.Argument(help="A DICOM file, or a folder (searched recursively).")],
    out: Annotated[Path, typer.Argument(help="Output folder: one sub-folder (series) per CR.")],
    cr: Annotated[list[str] | None, _cr_option("Target CR, as the paper defines it; > 1 here")] = None,
    ladder: Annotated[Ladder | None, _choice(Ladder, "ladder", "A CR ladder: 'paper' (15...11000).")] = None,
    lossless: Annotated[bool, typer.Option("--lossless", help="Also write JPEG 2000 lossless.")] = False,
    workers: WorkersOpt = 0,
    psnr: Annotated[bool, typer.Option("--psnr", help="Also measure each output's PSNR (the paper's Eq. 1; "
                                       "decodes every output).")] = False,
) -> None:
    """Rewrite images as JPEG 2000 at exact compression ratios, with the derived-image bookkeeping."""
    targets = [*(_crs(cr) if cr else []), *(ladder.crs if ladder else [])]
    with refused(), _bars() as bar:
        run = transcode_tree(source, out, targets, lossless, psnr=psnr, workers=_workers(workers),
                             progress=_meter(bar, "transcode", "files"))
    Console().print(transcode_table(run, psnr))
    path_line(f"manifest: {run.manifest}")
    if run.failed:
        console.print(run.failures(), style="bold red", markup=False)
        raise typer.Exit(code=1)


# TLS for echo and send: any of the three turns it on.
TlsCaOpt = Annotated[Path | None, typer.Option("--tls-ca", help="Speak TLS; the peer's certificate must be "
                                               "signed by this CA (PEM). Without it, with --tls-cert: by one "
                                               "of the system's CAs.")]
TlsCertOpt = Annotated[Path | None, typer.Option("--tls-cert", help="Speak TLS, presenting this client "
                                                 "certificate (PEM; with --tls-key).")]
TlsKeyOpt = Annotated[Path | None, typer.Option("--tls-key", help="The private key (PEM) of --tls-cert.")]
AetOpt = Annotated[str, typer.Option("--aet", help="The peer's (called) AE title.")]


def _peer(address: str, aet: str, calling_aet: str, tls: tuple[Path | None, ...]):
    """The Peer of the command's options, TLS checked now (ValueError) when a --tls-* is given."""
    client = scu.ClientTLS(*tls) if any(tls) else None
    if client is not None:
        client.context()
    return scu.Peer.parse(address, aet, calling_aet, client)


@commands.command()
def echo(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the peer.")], aet: AetOpt,
    calling_aet: Annotated[str, typer.Option(help="Our (calling) AE title.")] = "DICOMCR",
    tls_ca: TlsCaOpt = None, tls_cert: TlsCertOpt = None, tls_key: TlsKeyOpt = None,
) -> None:
    """C-ECHO a DICOM peer: checks that it is reachable and accepts us."""
    with refused(scu.NetworkError):
        peer = _peer(address, aet, calling_aet, (tls_ca, tls_cert, tls_key))
        status = scu.echo(peer)
    if status != 0:
        fail(f"{peer} answered C-ECHO with status 0x{status:04X}")
    Console().print(f"C-ECHO {peer}: success")


@commands.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (recursive).")],
    to: Annotated[str, typer.Option("--to", help="HOST:PORT of the peer.")], aet: AetOpt,
    calling_aet: Annotated[str, typer.Option(help="Our (calling) AE title. A dicomcr node picks the "
                                             "sending site by it: give the calling AE of the site "
                                             "whose policy should apply.")] = "DICOMCR",
    tls_ca: TlsCaOpt = None, tls_cert: TlsCertOpt = None, tls_key: TlsKeyOpt = None,
) -> None:
    """C-STORE DICOM files to a peer, with progress; exit 1 if any file was not stored."""
    with refused(FileNotFoundError):
        peer = _peer(to, aet, calling_aet, (tls_ca, tls_cert, tls_key))
        files = [path for root in paths for path, _ in find_inputs(root)] or fail("no DICOM files to send")
    failed = []
    with refused(scu.NetworkError), _bars() as bar:
        meter = _meter(bar, "send", "files")
        for done, result in enumerate(scu.send(peer, files), start=1):
            meter(done, len(files))
            if not result.ok:
                failed.append(result)
                console.print(f"{result.path}: {result.error}", style="red", markup=False,
                              highlight=False, soft_wrap=True)
    Console().print(f"stored {len(files) - len(failed)} of {len(files)} file(s) at {peer}")
    if failed:
        raise typer.Exit(code=1)


# ---------------------------------------------------------------- experiments (offline)
# Options the experiment commands share: where the data are and how they are read, what trains.
DataOpt = Annotated[Path, typer.Argument(help="The image folder (a phantom cohort, or the DICOM folder "
                                              "that --labels refers to).")]
SourceOpt = Annotated[str, typer.Argument(help=(
    "The image folder (a phantom cohort, or the DICOM folder that --labels refers to), or a phantom cohort "
    "to stream into the cache, never written: phantom:studies=N[,seed=S][,size=..][,vendor=..]"
    "[,difficulty=..][,mix=N/B/M], or a cohort's phantom.json."))]
FormatOpt = Annotated[DatasetFormat, _choice(DatasetFormat, "dataset format", "How DATA is labelled: "
                                             "phantom (DATA/labels.csv), csv, rsna or vindr.", "--format")]
LabelsOpt = Annotated[Path | None, typer.Option("--labels", help="The labels CSV (csv, rsna: train.csv, "
                                                "vindr: breast-level_annotations.csv).")]
ColumnsOpt = Annotated[str | None, typer.Option("--columns", help=(
    "For --format csv: patient=COL,laterality=COL,view=COL,label=COL,path=TEMPLATE[,positive=V1|V2]"
    "[,finding=COL], e.g. path={pid}/{img}.dcm; positive: the label values that mean malignant "
    "(default 1)."))]
CacheOpt = Annotated[Path | None, typer.Option(help="Preprocessed-input cache; default DATA/.dicomcr-cache "
                                                "(a phantom to stream: beside its phantom.json, or here).")]
ArchOpt = Annotated[Architecture, _choice(Architecture, "architecture", "cnn3 (paper), resnet18.", "--arch")]
ImagenetOpt = Annotated[Path | None, typer.Option(help="ResNet18 ImageNet weights (a torchvision .pth); "
                                                  "default: the local torch cache.")]
EpochsOpt = Annotated[int, typer.Option(help="Maximum epochs.")]
BatchOpt = Annotated[int, typer.Option(help="Inputs per batch.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split, the weights and the order.")]
DeviceOpt = Annotated[Device, _choice(Device, "device", "auto, cpu or cuda.")]
InputSizeOpt = Annotated[int | None, typer.Option(help=(
    "Model input rows = columns: the pair is resized to it (smaller trades resolution for CPU time). "
    "Default: the pair at the paper's 30 % pitch, padded."))]
ExecutorOpt = Annotated[Executor, _choice(Executor, "executor", (
    "Where the fold x model cells run: local (here, one after another) or ray (each cell a Ray task; "
    "the cache and --out on storage every node sees)."))]
AddressOpt = Annotated[str | None, typer.Option(help=(
    "--executor ray: the cluster to join (HOST:PORT from `ray start --head`, or auto); default: "
    "RAY_ADDRESS, else a Ray started here."))]
CellCpusOpt = Annotated[int | None, typer.Option(help=(
    "CPU threads of each cell; default: every core (local), 1 per task (ray). The same value gives "
    "bit-identical results with either executor."))]
VIEWS = "views (missing from the cache)"  # what the preprocessing bar counts


def _dataset(data: Path, layout: DatasetFormat, labels: Path | None, columns: str | None):
    """Read DATA with the chosen reader; say what was left out, in a few lines."""
    with refused(FileNotFoundError):
        dataset = load_dataset(data, layout, labels, columns)
    for line in dataset.notes():
        _say(line)
    console.print(dataset.summary())
    return dataset.breasts


def _source(data: str, layout: DatasetFormat, labels: Path | None, columns: str | None):
    """DATA as `open_data` reads it (a folder, or a phantom to stream); what was left out, in a few lines."""
    from dicomcr.experiments.run import open_data

    with refused(FileNotFoundError):
        source = open_data(data, layout, labels, columns)
    for line in source.notes:
        _say(line)
    console.print(source.summary, markup=False, highlight=False)
    return source


def _setup(arch: Architecture, imagenet: Path | None, epochs: int, batch_size: int, seed: int,
           device: Device, input_size: int | None):
    """(network, train options, preprocessing) of the options train and cv share, or exit 2."""
    from dicomcr.data.preprocess import Preprocessing
    from dicomcr.experiments.run import Network
    from dicomcr.experiments.train import TrainOptions

    with refused():
        return (Network(arch, imagenet),
                TrainOptions(epochs=epochs, batch_size=batch_size, seed=seed, device=device),
                Preprocessing(input_size=(input_size, input_size) if input_size else None))


def _cv_events(bar: Progress, folds: int):
    """(Events, cv bar) of a cv run: notes, the preprocessing bar, the cv bar (folds, cell, epochs)."""
    from dicomcr.experiments.run import Events

    pre, cv = _meter(bar, "preprocess", VIEWS), _meter(bar, "cv", "folds")
    started, cell = itertools.count(), [""]  # folds started; the cell training now

    def on_fold(plan, fold, reused: bool) -> None:
        cell[0] = f"{plan.name} fold {fold.index + 1}/{folds}"
        cv(next(started), None, cell[0] + (" (done before)" if reused else ""))

    return Events(note=_say, preprocess=pre, fold=on_fold, epoch=lambda r: cv(
        None, None, f"{cell[0]} epoch {r['epoch']} val AUROC {r['val_auroc']:.3f}")), cv


@commands.command()
def train(
    data: SourceOpt,
    out: Annotated[Path, typer.Option("--out", help="The model file to write (.dcmcr).")],
    cr: Annotated[list[str] | None, typer.Option("--cr", help="The CR to train at (1: original).")] = None,
    cr_mix: Annotated[list[str] | None, typer.Option("--cr-mix", help=f"A CR mixture ({CR_FORMS}).")] = None,
    arch: ArchOpt = Architecture.CNN3, imagenet_weights: ImagenetOpt = None,
    epochs: EpochsOpt = 30, batch_size: BatchOpt = 16, seed: SeedOpt = 0,
    device: DeviceOpt = Device.AUTO, input_size: InputSizeOpt = None,
    layout: FormatOpt = DatasetFormat.PHANTOM, labels_csv: LabelsOpt = None,
    columns: ColumnsOpt = None, cache: CacheOpt = None, workers: WorkersOpt = 0,
    nproc: Annotated[int, typer.Option(help=(
        "Train on N processes of this machine with DistributedDataParallel (torchrun; gloo on the CPU, "
        "NCCL with one GPU each). Across machines run `torchrun ... -m dicomcr train` on each (README)."
    ))] = 1,
) -> None:
    """Train a classifier at one CR or a CR mixture; split by patient 7:1:2, early stopping on val AUROC."""
    from dicomcr.experiments import distributed, run, tables

    if (cr is None) == (cr_mix is None):
        fail("give exactly one of --cr and --cr-mix")
    crs = _crs(cr_mix or cr or [])
    if cr is not None and len(crs) > 1:
        fail(f"--cr names one CR, got {', '.join(f'{c:g}' for c in crs)}: for a mixture use --cr-mix")
    network, options, p = _setup(arch, imagenet_weights, epochs, batch_size, seed, device, input_size)
    console.quiet = not distributed.reports()  # under torchrun, rank 0 alone speaks
    source = _source(data, layout, labels_csv, columns)
    with refused(), _bars() as bar:
        pre, fit = _meter(bar, "preprocess", VIEWS), _meter(bar, "train", "epochs")
        events = run.Events(note=_say, preprocess=pre, epoch=lambda r: fit(
            r["epoch"], epochs, f"loss {r['loss']:.3f} val AUROC {r['val_auroc']:.3f}"))
        trained = run.train(source.source, crs, out, cache or source.cache, nproc=nproc,
                            network=network, options=options, preprocessing=p, workers=_workers(workers),
                            events=events)
    if not console.quiet:
        Console().print(tables.trained_table(trained))


@commands.command("model-info")
def model_info(
    model: Annotated[Path, typer.Argument(help="A .dcmcr model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Everything the file records, as JSON.")] = False,
) -> None:
    """What a .dcmcr model file holds: network, input, CRs, threshold, data, validation."""
    import json

    from dicomcr.experiments.tables import model_table
    from dicomcr.models.modelfile import load_model

    with refused():
        _, info = load_model(model)
    if as_json:
        typer.echo(json.dumps(info.as_json(model), indent=1, allow_nan=False))
    else:
        Console().print(model_table(model, info))


@commands.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A .dcmcr model file.")], data: DataOpt,
    cr: Annotated[list[str] | None, _cr_option("Test CR; default: the model's CRs")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-breast probabilities (CSV).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the AUPRC bootstrap.")] = 0,
    layout: FormatOpt = DatasetFormat.PHANTOM, labels_csv: LabelsOpt = None,
    columns: ColumnsOpt = None, cache: CacheOpt = None, workers: WorkersOpt = 0,
) -> None:
    """AUROC (DeLong 95 % CI) and AUPRC (bootstrap 95 % CI) of a model on every breast of DATA."""
    from dicomcr.experiments import run, tables

    crs = _crs(cr) if cr else None
    breasts = _dataset(data, layout, labels_csv, columns)
    with refused(), _bars() as bar:
        events = run.Events(note=_say, preprocess=_meter(bar, "preprocess", VIEWS))
        result = run.evaluate(model, breasts, crs, cache or data / ".dicomcr-cache", predictions=predictions,
                              seed=seed, workers=_workers(workers), events=events)
    Console().print(tables.tested_table(result, str(data)))
    if predictions is not None:
        path_line(f"predictions: {predictions}")


@commands.command()
def cv(
    data: SourceOpt,
    out: Annotated[Path, typer.Option("--out", help="Results folder (its finished folds are reused).")],
    cr: Annotated[list[str] | None, _cr_option("The CRs to train at; default: paper")] = None,
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    cross: Annotated[bool, typer.Option("--cross", help="Table 2: test every model at every CR.")] = False,
    augment: Annotated[bool, typer.Option("--augment", help="Fig. 4: also the CR mixtures 1-x.")] = False,
    saliency: Annotated[bool, typer.Option("--saliency", help="Grad-CAM against the lesion masks, per CR.")
                        ] = False,
    arch: ArchOpt = Architecture.CNN3, imagenet_weights: ImagenetOpt = None,
    epochs: EpochsOpt = 30, batch_size: BatchOpt = 16, seed: SeedOpt = 0,
    device: DeviceOpt = Device.AUTO, input_size: InputSizeOpt = None,
    layout: FormatOpt = DatasetFormat.PHANTOM, labels_csv: LabelsOpt = None,
    columns: ColumnsOpt = None, cache: CacheOpt = None, workers: WorkersOpt = 0,
    executor: ExecutorOpt = Executor.LOCAL, address: AddressOpt = None, cell_cpus: CellCpusOpt = None,
) -> None:
    """Five-fold cross-validation of the paper's experiments: Table 1, --cross Table 2, --augment Fig. 4."""
    from dicomcr.experiments import placement, tables
    from dicomcr.experiments.executors import RayUnavailable
    from dicomcr.experiments.run import run_cv

    with refused():
        cells = placement.ExecutorChoice(executor, address, cell_cpus)
    crs = _crs(cr or ["paper"])
    network, options, p = _setup(arch, imagenet_weights, epochs, batch_size, seed, device, input_size)
    source = _source(data, layout, labels_csv, columns)
    with refused(RayUnavailable), _bars() as bar, cells.open() as here:
        events, meter = _cv_events(bar, folds)
        run = run_cv(source.source, crs, out, cache or source.cache, folds=folds, cross=cross,
                     augment=augment, saliency=saliency, network=network, options=options,
                     preprocessing=p, workers=_workers(workers), events=events, source=source.name,
                     executor=here)
        meter(len(run.plans) * folds, len(run.plans) * folds)
    if run.reused:
        path_line(f"{run.reused} fold(s) were finished before and reused from {out}/folds")
    Console().print(tables.cv_tables(run, cross or augment))
    for path in run.written:
        path_line(f"wrote {path}")


@commands.command()
def report(
    results: Annotated[Path, typer.Argument(help="A results folder of dicomcr cv or dicomcr detectability.")],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file; default RESULTS/report.html.")] = None,
) -> None:
    """One self-contained HTML page (viewable offline) with the tables and figures of a results folder."""
    from dicomcr.audit.pages import write_results_report

    check_writable(out)
    with refused():
        path_line(f"report: {write_results_report(results, out)}", err=False)


@commands.command()
def saliency(
    models: Annotated[list[Path], typer.Argument(help="Model files (.dcmcr), then the study folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder: SCs and SR per model and CR, saliency.png.")],
    cr: Annotated[list[str] | None, _cr_option("CRs to compress the study at; default: the models'")] = None,
    device: DeviceOpt = Device.CPU,
) -> None:
    """Grad-CAM saliency of one study: SCs and an SR as DICOM, and a figure like the paper's Fig. 3."""
    from dicomcr.inference.offline import saliency_study

    *model_files, study = models
    crs = _crs(cr) if cr else None
    with refused(), console.status(f"{len(model_files)} model(s) on {study}"):
        result = saliency_study(model_files, study, crs, out, device)
    for line in result.problems:
        _say(line)
    Console().print(result.table(study))
    path_line(f"{len(result.written)} DICOM objects under {out}; figure: {result.figure}")


@commands.command()
def detectability(
    out: Annotated[Path, typer.Argument(help="Results folder (a rerun measures only views not yet done).")],
    quick: Annotated[bool, typer.Option("--quick", help="Fewer pairs, one size, wider intervals.")] = False,
    cr: Annotated[list[str] | None, _cr_option("CRs to measure; default: paper")] = None,
    vendor: Annotated[list[str] | None, typer.Option(help="hologic or ge; default: both.")] = None,
    finding: Annotated[list[str] | None, typer.Option(help="A finding type; default: all.")] = None,
    workers: WorkersOpt = 0,
) -> None:
    """What each CR takes away from each finding type: model observers' d' and AUC with 95% CIs."""
    from dicomcr.audit.detectability import detectability_spec, onset_table
    from dicomcr.observers import run_detectability

    with refused(), _bars() as bar:
        spec = detectability_spec(quick, _crs(cr) if cr else None, vendor, finding)
        done = run_detectability(spec, out, _workers(workers), _meter(bar, "detectability", "view pairs"))
    Console().print(onset_table(done))


@commands.command()
def audit(
    folders: Annotated[list[Path] | None, typer.Argument(help="DICOM folders to audit.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A node's node.yaml: its sites, job store "
                                                "and storage.")] = None,
    site_map: Annotated[Path | None, typer.Option(help="CSV folder,site[,guideline].")] = None,
    results: Annotated[Path | None, typer.Option(help="cv --cross results (folder or JSON).")] = None,
    model: Annotated[Path | None, typer.Option(help="The deployed model of folder sites (a node's sites: "
                                               "their configured one).")] = None,
    guideline: Annotated[str | None, typer.Option(help="Judge every site against this guideline (UK, DE, "
                                                  "CA, US); default: against all.")] = None,
    guidelines: Annotated[Path | None, typer.Option(help="Your own guideline table (CSV: key, body, "
                                                    "modality, max_cr, source[, limit, ...]).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the audit as JSON.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the audit as HTML.")] = None,
    fail_on: Annotated[FailOn | None, _choice(FailOn, "--fail-on value", (
        "Exit 1 when a site shows a 'violation' (guideline or DICOM rules), a 'degraded' model (or one that "
        "cannot judge), a finding 'lost' or a 'degraded-detectability' (degraded or lost)."))] = None,
    same_data: Annotated[bool, typer.Option("--same-data", help=(
        "The --results are the sites' own data, whatever their data fingerprint."))] = False,
    detectability: Annotated[DetectabilityMode, _choice(DetectabilityMode, "--detectability value", (
        "Model observers at each site's highest CR: quick, full or off; runs cached in "
        "$DICOMCR_DETECTABILITY_CACHE, else ~/.cache/dicomcr/detectability."))] = DetectabilityMode.QUICK,
) -> None:
    """Audit every site's compression: achieved CRs, DICOM rules, guidelines, the model, detectability."""
    from dicomcr.audit.report import file_lines, terminal_table
    from dicomcr.audit.sites import run_audit

    check_writable(json_out, html_out)
    with refused(), _bars() as bar:
        done = run_audit(folders or [], config, site_map=site_map, results=results, model=model,
                         guideline=guideline, guidelines=guidelines, fail_on=fail_on, same_data=same_data,
                         detectability=detectability, progress=_meter(bar, "detectability", "view pairs"))
    Console().print(terminal_table(done.sites))
    for line in [*file_lines(done.sites), *done.problems, *done.write(json_out, html_out)]:
        _say(line)
    if reasons := done.reasons(fail_on):
        _say("\n".join(f"--fail-on {fail_on}: {line}" for line in reasons))
        raise typer.Exit(code=1)
