"""The `dicomcr` command: a thin Typer shell over the library."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dicomcr import __version__

app = typer.Typer(
    help="dicomcr: JPEG 2000 at exact compression ratios for mammography, as a DICOM toolkit.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dicomcr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """dicomcr: JPEG 2000 at exact compression ratios for mammography, as a DICOM toolkit."""


def _progress(label: str, unit: str, status: bool = False, disable: bool = False) -> Progress:
    """The one progress bar of the command line: label, bar, done/total unit, [status], time."""
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit)]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    return Progress(*columns, TimeElapsedColumn(), console=console, disable=disable)


def fail(message: str) -> None:
    """Say what is wrong (whole lines, no markup from the message) and exit with status 2."""
    console.print("[bold red]error:[/] ", end="")
    console.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def check_writable(*paths: Path | None) -> None:
    """Exit 2 now, in one line, when an output file given could not be written after the work."""
    from dicomcr.outputs import output_file

    try:
        for path in paths:
            if path is not None:
                output_file(path)
    except ValueError as exc:
        fail(str(exc))


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Folder to write the cohort into.")],
    studies: Annotated[int, typer.Option("--studies", "-n", help="Number of 4-view studies.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same files.")] = 0,
    size: Annotated[str, typer.Option(help="full (the devices' sizes) or small (1/4, for tests).")
                    ] = "full",
    vendor: Annotated[str, typer.Option(help="hologic, ge or mixed (alternating).")] = "mixed",
    workers: Annotated[int, typer.Option(help="Processes; default: all cores.")] = 0,
    difficulty: Annotated[str, typer.Option(help="Lesion difficulty: physical (the physics alone, "
                                                 "the default) or conspicuous (the earlier default:"
                                                 " masses x3, calcifications x8, sizes x2, beyond "
                                                 "the detector's range).")] = "physical",
    force: Annotated[bool, typer.Option("--force", help="Replace a cohort already in OUT (its "
                                        "dicom/, masks/, labels.csv, phantom.json).")] = False,
) -> None:
    """Write a synthetic four-view screening mammography cohort with lesion masks and labels.csv.

    OUT/dicom holds the DICOM files and nothing else (send it whole); OUT/masks the lesion masks.
    """
    from dicomcr.phantom import CohortSpec, Difficulty, write_cohort

    try:
        spec = CohortSpec(n_studies=studies, seed=seed, size=size, vendor=vendor,
                          difficulty=Difficulty.named(difficulty))
    except ValueError as exc:
        fail(str(exc))
    workers = workers if workers > 0 else (os.cpu_count() or 1)
    workers = min(workers, studies)
    with _progress("phantom", "studies", disable=studies < 2) as bar:
        task = bar.add_task("phantom", total=studies)
        try:
            summary = write_cohort(spec, out, workers, progress=lambda _: bar.advance(task),
                                   force=force)
        except ValueError as exc:
            fail(str(exc))

    table = Table(title="Phantom cohort", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("folder", str(summary.out))
    table.add_row("studies / images", f"{summary.studies} / {summary.images}")
    table.add_row("findings", ", ".join(f"{k} {v}" for k, v in sorted(summary.findings.items())))
    table.add_row("vendors", ", ".join(f"{k} {v}" for k, v in sorted(summary.vendors.items())))
    table.add_row("photometric", ", ".join(f"{k} {v}" for k, v in
                                           sorted(summary.photometric.items())))
    table.add_row("size on disk", f"{summary.bytes_written / 2**20:.1f} MiB")
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.seconds_per_study:.2f} s per study, "
                          f"{workers} worker{'s' if workers > 1 else ''})")
    table.add_row("DICOM", f"{summary.dicom} (DICOM files only: send this folder)")
    table.add_row("lesion masks", str(summary.masks))
    table.add_row("labels", str(summary.out / "labels.csv"))
    Console().print(table)


@app.command()
def transcode(
    source: Annotated[Path, typer.Argument(help="A DICOM file, or a folder (searched recursively).")],
    out: Annotated[Path, typer.Argument(help="Output folder: one sub-folder (series) per CR.")],
    cr: Annotated[list[str] | None, _cr_option("Target compression ratio, as the paper defines "
                                               "it; must be > 1 here")] = None,
    ladder: Annotated[str | None, typer.Option(help="A named CR ladder: 'paper' (15 ... 11000).")
                      ] = None,
    lossless: Annotated[bool, typer.Option("--lossless", help="Also write JPEG 2000 lossless.")
                        ] = False,
    workers: Annotated[int, typer.Option(help="Processes; default: all cores.")] = 0,
    psnr: Annotated[bool, typer.Option("--psnr", help="Also measure each output's PSNR (the "
                                       "paper's Eq. 1; decodes every output).")] = False,
) -> None:
    """Rewrite images as JPEG 2000 at exact compression ratios, with the derived-image bookkeeping."""
    from concurrent.futures import ProcessPoolExecutor

    from dicomcr.codec.j2k import check_ratio
    from dicomcr.outputs import output_folder
    from dicomcr.transcode import LADDERS, find_inputs, transcode_file, write_manifest

    targets = _crs(cr) if cr else []
    if ladder is not None:
        if ladder not in LADDERS:
            fail(f"unknown ladder {ladder!r}; choose one of {', '.join(LADDERS)}")
        targets += LADDERS[ladder]
    if not targets and not lossless:
        fail("nothing to do: give --cr, --ladder or --lossless")
    try:
        targets = [check_ratio(t) for t in targets]
    except ValueError as exc:
        fail(str(exc))
    try:
        inputs = list(find_inputs(source))
    except FileNotFoundError as exc:
        fail(str(exc))
    if not inputs:
        fail(f"no DICOM files under {source}")
    try:
        output_folder(out)
    except ValueError as exc:
        fail(str(exc))
    workers = min(workers if workers > 0 else (os.cpu_count() or 1), len(inputs))

    rows = []
    with _progress("transcode", "files") as bar, ProcessPoolExecutor(workers) as pool:
        task = bar.add_task("transcode", total=len(inputs))
        jobs = [pool.submit(transcode_file, path, out, relative, targets, lossless, psnr=psnr)
                for path, relative in inputs]
        for job in jobs:
            rows += job.result()
            bar.advance(task)
    write_manifest(rows, out / "manifest.csv")

    table = Table(title=f"Transcoded {len(inputs)} file(s) into {out}")
    columns = ("file", "target CR", "achieved CR", *(("PSNR dB",) if psnr else ()), "status")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows[:200]:
        line = row.to_manifest()
        status = "ok" if row.ok else f"[red]failed: {row.error}[/]"
        table.add_row(line.source, line.target, line.achieved_cr,
                      *((line.psnr_db,) if psnr else ()), status)
    if len(rows) > 200:
        table.add_row("…", f"{len(rows) - 200} more rows in manifest.csv",
                      *[""] * (len(columns) - 2))
    Console().print(table)
    bad = [row for row in rows if not row.ok]
    console.print(f"manifest: {out / 'manifest.csv'}")
    if bad:
        files = len({row.source for row in bad})
        console.print(f"[bold red]{len(bad)} of {len(rows)} output(s) failed, in {files} of "
                      f"{len(inputs)} file(s)[/]")
        raise typer.Exit(code=1)


# TLS for echo and send: any of the three turns it on.
TlsCaOpt = Annotated[Path | None, typer.Option(
    "--tls-ca", help="Speak TLS; the peer's certificate must be signed by this CA (PEM). "
    "Without it, with --tls-cert: by one of the system's CAs.")]
TlsCertOpt = Annotated[Path | None, typer.Option(
    "--tls-cert", help="Speak TLS, presenting this client certificate (PEM; with --tls-key).")]
TlsKeyOpt = Annotated[Path | None, typer.Option(
    "--tls-key", help="The unencrypted private key (PEM) of --tls-cert.")]


def _client_tls(ca: Path | None, cert: Path | None, key: Path | None):
    """The ClientTLS of the --tls-* options, or None (plain TCP) when none is given; ValueError
    now, before any work, when a file cannot be used."""
    from dicomcr.net.scu import ClientTLS

    if ca is None and cert is None and key is None:
        return None
    tls = ClientTLS(ca, cert, key)
    tls.context()
    return tls


@app.command()
def echo(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the peer.")],
    aet: Annotated[str, typer.Option("--aet", help="The peer's (called) AE title.")],
    calling_aet: Annotated[str, typer.Option(help="Our (calling) AE title.")] = "DICOMCR",
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """C-ECHO a DICOM peer: checks that it is reachable and accepts us."""
    from dicomcr.net.scu import NetworkError, Peer
    from dicomcr.net.scu import echo as c_echo

    try:
        peer = Peer.parse(address, aet, calling_aet, _client_tls(tls_ca, tls_cert, tls_key))
        status = c_echo(peer)
    except (ValueError, NetworkError) as exc:
        fail(str(exc))
    if status != 0:
        fail(f"{peer} answered C-ECHO with status 0x{status:04X}")
    Console().print(f"C-ECHO {peer}: success")


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (recursive).")],
    to: Annotated[str, typer.Option("--to", help="HOST:PORT of the peer.")],
    aet: Annotated[str, typer.Option("--aet", help="The peer's (called) AE title.")],
    calling_aet: Annotated[str, typer.Option(help="Our (calling) AE title.")] = "DICOMCR",
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """C-STORE DICOM files to a peer, with progress; exit 1 if any file was not stored."""
    from dicomcr.net.scu import NetworkError, Peer
    from dicomcr.net.scu import send as c_store
    from dicomcr.transcode import find_inputs

    try:
        peer = Peer.parse(to, aet, calling_aet, _client_tls(tls_ca, tls_cert, tls_key))
        files = [path for root in paths for path, _ in find_inputs(root)]
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if not files:
        fail("no DICOM files to send")
    failed = []
    try:
        with _progress("send", "files") as bar:
            task = bar.add_task("send", total=len(files))
            for result in c_store(peer, files):
                bar.advance(task)
                if not result.ok:
                    failed.append(result)
                    console.print(f"{result.path}: {result.error}", style="red", markup=False,
                                  highlight=False, soft_wrap=True)
    except (ValueError, NetworkError) as exc:
        fail(str(exc))
    Console().print(f"stored {len(files) - len(failed)} of {len(files)} file(s) at {peer}")
    if failed:
        raise typer.Exit(code=1)


# ---------------------------------------------------------------- experiments (offline)
# Options every experiment command shares: where the data are and how they are read.
FormatOpt = Annotated[str, typer.Option("--format", help="How DATA is labelled: phantom "
                                        "(DATA/labels.csv), csv, rsna or vindr.")]
LabelsOpt = Annotated[Path | None, typer.Option("--labels", help="The labels CSV (csv, rsna: "
                                                "train.csv, vindr: breast-level_annotations.csv).")]
ColumnsOpt = Annotated[str | None, typer.Option("--columns", help="For --format csv: patient=COL,"
                                                "laterality=COL,view=COL,label=COL,path=TEMPLATE"
                                                "[,positive=V1|V2][,finding=COL], e.g. path="
                                                "{pid}/{img}.dcm; positive: the label values "
                                                "that mean malignant (default 1).")]
CacheOpt = Annotated[Path | None, typer.Option(help="Preprocessed-input cache; default "
                                                    "DATA/.dicomcr-cache.")]
WorkersOpt = Annotated[int, typer.Option(help="Processes for preprocessing; default: all cores.")]
ArchOpt = Annotated[str, typer.Option("--arch", help="cnn3 (the paper's) or resnet18.")]
ImagenetOpt = Annotated[Path | None, typer.Option(help="ResNet18 ImageNet weights (a torchvision "
                                                  ".pth); default: the local torch cache.")]
EpochsOpt = Annotated[int, typer.Option(help="Maximum epochs.")]
BatchOpt = Annotated[int, typer.Option(help="Inputs per batch.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split, the weights and the order.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
InputSizeOpt = Annotated[int | None, typer.Option(help="Model input rows = columns: shrinks the "
                                                "pair, trading resolution for CPU time. Default: "
                                                "the pair at the paper's 30 % pitch, padded.")]
CR_FORMS = ("repeatable; each a CR, a list '1,20,1000', a range of the paper's CRs '1-11000' or "
            "'paper' (1 and the paper's ten lossy CRs); 1 = the original")


def _cr_option(what: str) -> typer.models.OptionInfo:
    """The one `--cr` option: repeatable, each value a CR, a comma list, a range or 'paper'."""
    return typer.Option("--cr", help=f"{what} ({CR_FORMS}).")


def _crs(values: list[str]) -> list[float]:
    """The CRs named by repeated `--cr` values (see dicomcr.codec.j2k.parse_crs), or exit 2."""
    from dicomcr.codec.j2k import parse_crs

    try:
        return parse_crs(values)
    except ValueError as exc:
        fail(str(exc))


def _dataset(data: Path, layout: str, labels: Path | None, columns: str | None):
    """Read DATA with the chosen reader; say what was left out, in a few lines."""
    from dicomcr.data.dataset import load_dataset

    try:
        dataset = load_dataset(data, layout, labels, columns)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for line in dataset.problems[:10]:
        console.print(f"[yellow]{line}[/]", markup=True, highlight=False)
    if len(dataset.problems) > 10:
        console.print(f"[yellow]... and {len(dataset.problems) - 10} more problems[/]")
    breasts = dataset.breasts
    console.print(f"{len(breasts)} breasts of {len({b.patient_id for b in breasts})} patients "
                  f"({sum(b.malignant for b in breasts)} malignant) from {dataset.source}")
    return breasts


def _preprocessing(input_size: int | None):
    """The paper's preprocessing; the canvas comes from the data, `--input-size` shrinks it."""
    from dicomcr.data.preprocess import Preprocessing

    try:
        return Preprocessing(input_size=(input_size, input_size) if input_size else None)
    except ValueError as exc:
        fail(str(exc))


def _network(arch: str, imagenet: Path | None):
    from dicomcr.experiments.run import Network
    from dicomcr.models import ARCHITECTURES, Architecture

    if arch not in ARCHITECTURES:
        fail(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return Network(Architecture(arch), imagenet)


def _options(epochs: int, batch_size: int, seed: int, device: str):
    from dicomcr.experiments.train import TrainOptions
    from dicomcr.models import pick_device

    try:
        options = TrainOptions(epochs=epochs, batch_size=batch_size, seed=seed, device=device)
        pick_device(device)
    except ValueError as exc:
        fail(str(exc))
    return options


def _bars() -> Progress:
    """Progress bars of a run with stages (preprocess, then train or cv), one line each; a
    stage's bar is added hidden and shown when it starts, so that a run refused before any work
    prints its one line only."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(), console=console)


def _say(text: str) -> None:
    console.print(text, style="yellow", markup=False, highlight=False)


def _preprocess(breasts: list, crs: list[float], p, cache: Path | None, data: Path,
                workers: int):
    """The preprocessed inputs at every CR, from the cache or computed with a progress bar."""
    from dicomcr.experiments.run import Events, preprocess

    with _bars() as bar:
        task = bar.add_task("preprocess", total=None, unit="views (missing from the cache)",
                            status="")
        events = Events(preprocess=lambda done, total: bar.update(task, completed=done,
                                                                  total=total))
        try:
            return preprocess(breasts, crs, p, _cache(cache, data), _workers(workers), events)
        except ValueError as exc:
            fail(str(exc))


def _cache(cache: Path | None, data: Path) -> Path:
    return cache or Path(data) / ".dicomcr-cache"


def _workers(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="The image folder (a phantom cohort, or the DICOM "
                                              "folder that --labels refers to).")],
    out: Annotated[Path, typer.Option("--out", help="The model file to write (.dcmcr).")],
    cr: Annotated[list[str] | None, typer.Option("--cr", help="Train at this one CR (1 = the "
                                                  "original).")] = None,
    cr_mix: Annotated[list[str] | None, typer.Option("--cr-mix", help=f"Train on a CR mixture "
                                                     f"({CR_FORMS}).")] = None,
    arch: ArchOpt = "cnn3",
    imagenet_weights: ImagenetOpt = None,
    epochs: EpochsOpt = 30,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    input_size: InputSizeOpt = None,
    layout: FormatOpt = "phantom",
    labels_csv: LabelsOpt = None,
    columns: ColumnsOpt = None,
    cache: CacheOpt = None,
    workers: WorkersOpt = 0,
    nproc: Annotated[int, typer.Option(
        help="Train on N processes of this machine with DistributedDataParallel (torchrun; gloo "
             "on the CPU, NCCL with one GPU each). Across machines run `torchrun ... -m dicomcr "
             "train` on each (README).")] = 1,
) -> None:
    """Train a classifier at one CR or a CR mixture; split by patient 7:1:2, early stopping on val AUROC."""
    from dicomcr.experiments.distributed import TrainRequest, World, launch
    from dicomcr.experiments.run import Events, train_classifier

    if (cr is None) == (cr_mix is None):
        fail("give exactly one of --cr and --cr-mix")
    crs = _crs(cr_mix or cr)
    if cr is not None and len(crs) > 1:
        fail(f"--cr names one CR to train at, got {', '.join(f'{c:g}' for c in crs)}: "
             f"for a mixture use --cr-mix")
    options = _options(epochs, batch_size, seed, device)
    p = _preprocessing(input_size)
    network = _network(arch, imagenet_weights)
    world = World.from_env()
    if nproc != 1 and (world is not None or nproc < 1):
        fail(f"--nproc {nproc}: give N >= 2, outside torchrun (under torchrun its own "
             "--nproc-per-node says it)")
    if world is not None and not world.leader:
        console.quiet = True  # one rank speaks
    breasts = _dataset(data, layout, labels_csv, columns)
    if nproc > 1:
        console.print(f"training on {nproc} processes (torchrun, DistributedDataParallel)")
        try:
            trained = launch(TrainRequest(breasts, crs, out, _cache(cache, data), network,
                                          options, p, _workers(workers)), nproc,
                             echo=lambda line: console.print(line, markup=False,
                                                             highlight=False))
        except ValueError as exc:
            fail(str(exc))
        _print_trained(trained, arch)
        return
    with _bars() as bar:
        pre = bar.add_task("preprocess", total=None, unit="views (missing from the cache)",
                           status="", visible=False)
        fit = bar.add_task("train", total=options.epochs, unit="epochs", status="", visible=False)
        events = Events(
            note=_say,
            preprocess=lambda done, total: bar.update(pre, completed=done, total=total,
                                                      visible=True),
            epoch=lambda r: bar.update(fit, advance=1, visible=True,
                                       status=f"loss {r['loss']:.3f} val AUROC "
                                              f"{r['val_auroc']:.3f}"))
        try:
            trained = train_classifier(breasts, crs, out, _cache(cache, data), network=network,
                                       options=options, preprocessing=p,
                                       workers=_workers(workers), events=events)
        except ValueError as exc:
            fail(str(exc))
    if world is None or world.leader:
        _print_trained(trained, arch)


def _print_trained(trained, arch: str) -> None:
    """The summary of `dicomcr train`: split, geometry, epoch, threshold, test AUROC per CR."""
    crs = ", ".join(f"{c:g}" for c in trained.info.trained_crs)
    table = Table(title=f"{arch} trained at CR {crs}", show_header=False)
    table.add_row("split (patients)", " / ".join(str(n) for n in trained.split))
    table.add_row("input", _input_text(trained.info.preprocessing))
    table.add_row("best epoch", str(trained.best_epoch))
    table.add_row("operating threshold", f"{trained.threshold:.4f} ({trained.threshold_rule})")
    table.add_row("validation AUROC", f"{trained.validation_auroc:.3f}")
    for c, estimate in trained.test.items():
        table.add_row(f"test AUROC at CR {c:g}", f"not computed ({estimate})"
                      if isinstance(estimate, str) else
                      f"{estimate.value:.3f} (95% CI {estimate.low:.3f}-{estimate.high:.3f})")
    table.add_row("model file", str(trained.path))
    Console().print(table)


def _input_text(preprocessing: dict) -> str:
    """The model input in words: its size, and how the CC + MLO pair is fitted into it."""
    from dicomcr.data.preprocess import Preprocessing

    p = Preprocessing.from_dict(preprocessing)
    return f"{p.model_input[0]} x {p.model_input[1]}" + (
        f" (the pair at {p.scale:g} of the image, padded)" if p.keeps_pitch else
        f" (the {p.canvas[0]} x {p.canvas[1]} pair at {p.scale:g}, shrunk)")


def _finite(value):
    """`value` with every NaN or infinity as None, for strict JSON."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@app.command("model-info")
def model_info(
    model: Annotated[Path, typer.Argument(help="A .dcmcr model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything the file records, "
                                          "as JSON.")] = False,
) -> None:
    """What a .dcmcr model file holds: network, input, CRs, threshold, data, validation."""
    import json

    from dicomcr.models.modelfile import FORMAT_VERSION, ModelFileError, load_model

    try:
        _, info = load_model(model)
    except ModelFileError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(_finite({"file": str(model), "format_version": FORMAT_VERSION,
                                       **info.__dict__}), indent=1, allow_nan=False))
        return
    v = info.validation
    spec = ", ".join(f"{k} {'/'.join(map(str, x)) if isinstance(x, list) else x}"
                     for k, x in sorted(info.spec.items()) if k != "input_size")
    table = Table(title=str(model), show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("network", f"{info.architecture} ({spec})")
    table.add_row("input", _input_text(info.preprocessing))
    table.add_row("trained at CR", ", ".join(f"{c:g}" for c in info.trained_crs))
    table.add_row("threshold", f"{info.threshold:.4f} ({v.get('threshold_rule', 'rule not recorded')})")
    table.add_row("data fingerprint", info.data_fingerprint)
    auroc = v.get("val_auroc")
    table.add_row("validation", ", ".join(part for part in (
        f"AUROC {auroc:.3f}" if isinstance(auroc, float) and auroc == auroc else "AUROC n/a",
        f"best epoch {v['best_epoch']}" if "best_epoch" in v else "",
        f"cv fold {v['fold']}" if "fold" in v else "",
        f"split {' / '.join(map(str, v['split']))} patients" if "split" in v else "") if part))
    for key, (value, low, high) in sorted((k, x) for k, x in v.items()
                                          if k.startswith("test_auroc_cr")):
        table.add_row(f"test AUROC at CR {key.removeprefix('test_auroc_cr')}",
                      f"{value:.3f} (95% CI {low:.3f}-{high:.3f})")
    table.add_row("written by", ", ".join(f"{k} {x}" for k, x in sorted(info.versions.items())))
    Console().print(table)


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A .dcmcr model file.")],
    data: Annotated[Path, typer.Argument(help="The image folder (as for train).")],
    cr: Annotated[list[str] | None, _cr_option("Test CR; default: the model's CRs")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-breast probabilities (CSV).")
                           ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the AUPRC bootstrap.")] = 0,
    layout: FormatOpt = "phantom",
    labels_csv: LabelsOpt = None,
    columns: ColumnsOpt = None,
    cache: CacheOpt = None,
    workers: WorkersOpt = 0,
) -> None:
    """AUROC (DeLong 95 % CI) and AUPRC (bootstrap 95 % CI) of a model on every breast of DATA."""
    import csv

    import numpy as np
    import torch

    from dicomcr.data.preprocess import Preprocessing
    from dicomcr.experiments.metrics import auprc_bootstrap, auroc_delong
    from dicomcr.experiments.run import Events, reachable
    from dicomcr.experiments.train import predict
    from dicomcr.models.modelfile import ModelFileError, load_model

    try:
        network, info = load_model(model)
    except ModelFileError as exc:
        fail(str(exc))
    crs = _crs(cr) if cr else sorted(set(info.trained_crs))
    check_writable(predictions)
    breasts = _dataset(data, layout, labels_csv, columns)
    try:
        crs = list(reachable(breasts, crs, Events(note=_say)).kept)
    except ValueError as exc:
        fail(str(exc))
    p = Preprocessing.from_dict(info.preprocessing)
    inputs = _preprocess(breasts, crs, p, cache, data, workers)
    labels = np.array([b.malignant for b in breasts])
    table = Table(title=f"{model.name} (trained at CR {', '.join(f'{c:g}' for c in info.trained_crs)})"
                        f" on {len(breasts)} breasts of {data}")
    for name in ("test CR", "AUROC (95% CI)", "AUPRC (95% CI)"):
        table.add_column(name)
    rows = []
    for c in crs:
        scores = predict(network, inputs[c], torch.device("cpu"))
        rows += [(b.patient_id, b.laterality, b.malignant, f"{c:g}", f"{s:.6f}")
                 for b, s in zip(breasts, scores, strict=True)]
        try:
            auroc, auprc = auroc_delong(labels, scores), auprc_bootstrap(labels, scores, seed)
            table.add_row(f"{c:g}", str(auroc), str(auprc))
        except ValueError as exc:
            table.add_row(f"{c:g}", f"not computed: {exc}", "")
    Console().print(table)
    if predictions is not None:
        with open(predictions, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("patient_id", "laterality", "malignant", "cr", "probability"))
            writer.writerows(rows)
        console.print(f"predictions: {predictions}")


@app.command()
def cv(
    data: Annotated[Path, typer.Argument(help="The image folder (as for train).")],
    out: Annotated[Path, typer.Option("--out", help="Results folder (reused: finished folds are "
                                                    "not recomputed).")],
    cr: Annotated[list[str] | None, _cr_option("The CRs to train at; default: paper")] = None,
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    cross: Annotated[bool, typer.Option("--cross", help="Table 2: test every model at every CR.")
                     ] = False,
    augment: Annotated[bool, typer.Option("--augment", help="Fig. 4: also train on CR mixtures "
                                                            "1-x, tested at every CR.")] = False,
    saliency: Annotated[bool, typer.Option("--saliency", help="Score Grad-CAM against the lesion "
                                           "masks: pointing game and energy inside, per CR.")
                        ] = False,
    arch: ArchOpt = "cnn3",
    imagenet_weights: ImagenetOpt = None,
    epochs: EpochsOpt = 30,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    input_size: InputSizeOpt = None,
    layout: FormatOpt = "phantom",
    labels_csv: LabelsOpt = None,
    columns: ColumnsOpt = None,
    cache: CacheOpt = None,
    workers: WorkersOpt = 0,
    executor: Annotated[str, typer.Option(
        help="Where the fold x model cells run: local (here, one after another) or ray (each "
             "cell a Ray task; the cache and --out on storage every node sees).")] = "local",
    address: Annotated[str | None, typer.Option(
        help="--executor ray: the cluster to join (HOST:PORT from `ray start --head`, or auto); "
             "default: RAY_ADDRESS, else a Ray started here.")] = None,
    cell_cpus: Annotated[int | None, typer.Option(
        help="CPU threads of each cell; default: every core (local), 1 per task (ray). The same "
             "value gives bit-identical results with either executor.")] = None,
) -> None:
    """Five-fold cross-validation of the paper's experiments: Table 1, --cross Table 2, --augment Fig. 4."""
    from dicomcr.experiments.executors import RayUnavailable
    from dicomcr.experiments.executors import executor as make_executor
    from dicomcr.experiments.run import Events, run_cv

    if executor not in ("local", "ray"):
        fail(f"unknown executor {executor!r}; choose local or ray")
    if address is not None and executor != "ray":
        fail("--address is for --executor ray")
    crs = _crs(cr or ["paper"])
    options = _options(epochs, batch_size, seed, device)
    p = _preprocessing(input_size)
    network = _network(arch, imagenet_weights)
    breasts = _dataset(data, layout, labels_csv, columns)
    with _bars() as bar:
        pre = bar.add_task("preprocess", total=None, unit="views (missing from the cache)",
                           status="", visible=False)
        task = bar.add_task("cv", total=None, unit="folds", status="", visible=False)
        current = {"name": ""}

        def on_fold(plan, fold, done: bool) -> None:
            if current["name"]:
                bar.advance(task)
            current["name"] = f"{plan.name} fold {fold.index + 1}/{folds}"
            bar.update(task, status=current["name"] + (" (done before)" if done else ""),
                       visible=True)

        def on_epoch(record: dict) -> None:
            bar.update(task, status=f"{current['name']} epoch {record['epoch']} "
                                    f"val AUROC {record['val_auroc']:.3f}")

        events = Events(note=_say, fold=on_fold, epoch=on_epoch,
                        preprocess=lambda done, total: bar.update(pre, completed=done,
                                                                  total=total, visible=True))
        try:
            with make_executor(executor, address, cell_cpus) as cells:
                run = run_cv(breasts, crs, out, _cache(cache, data), folds=folds, cross=cross,
                             augment=augment, saliency=saliency, network=network,
                             options=options, preprocessing=p, workers=_workers(workers),
                             events=events, source=str(data), executor=cells)
        except (ValueError, RayUnavailable) as exc:
            fail(str(exc))
        bar.update(task, total=len(run.plans) * folds, completed=len(run.plans) * folds)
    if run.reused:
        console.print(f"{run.reused} fold(s) were finished before and reused from {out}/folds")
    _print_rows(run.rows, run.plans, cross or augment)
    _print_paired(run.rows)
    _print_findings(run.findings, run.findings_note)
    if run.saliency:
        table = Table(title="Grad-CAM against the lesion masks (malignant breasts, out of fold)")
        for name in ("model", "breasts", "pointing game (95% CI)", "energy inside (mean ± sd)"):
            table.add_column(name)
        for r in run.saliency:
            table.add_row(r.model, str(r.n), f"{r.pointing_rate:.2f} ({r.pointing_low:.2f}-"
                          f"{r.pointing_high:.2f})", f"{r.energy_mean:.3f} ± {r.energy_sd:.3f}")
        Console().print(table)
    for path in run.written:
        console.print(f"wrote {path}")


def _print_rows(rows: list, plans: list, every_cr: bool) -> None:
    """Table 1 (each model at its own CR) and, when tested at every CR, the AUROC matrix."""
    table = Table(title="Table 1: each model trained and tested at one CR (pooled out-of-fold)")
    for name in ("model", "AUROC (95% CI)", "fold mean ± sd", "AUPRC (95% CI)", "fold mean ± sd"):
        table.add_column(name)
    for r in rows:
        if r.train_crs == f"{r.test_cr:g}":
            table.add_row(r.model, f"{r.auroc:.3f} ({r.auroc_low:.3f}-{r.auroc_high:.3f})",
                          f"{r.fold_auroc_mean:.3f} ± {r.fold_auroc_sd:.3f}",
                          f"{r.auprc:.3f} ({r.auprc_low:.3f}-{r.auprc_high:.3f})",
                          f"{r.fold_auprc_mean:.3f} ± {r.fold_auprc_sd:.3f}")
    Console().print(table)
    if not every_cr:
        return
    crs = sorted({r.test_cr for r in rows})
    Console().print("AUROC of every model at every test CR (rows: model, columns: test CR)",
                    style="italic", highlight=False)
    matrix = Table()
    matrix.add_column("model")
    for c in crs:
        matrix.add_column(f"{c:g}", justify="right")
    for plan in plans:
        cells = {r.test_cr: f"{r.auroc:.3f}" for r in rows if r.model == plan.name}
        matrix.add_row(plan.name, *(cells.get(c, "") for c in crs))
    Console().print(matrix)


def _compact(title: str, crs: list[float], first: str, rows: list[list[str]], width: int) -> None:
    """Print a title line, then a table that reads at 80 columns: a label column and one narrow
    column (`width` characters) per test CR."""
    from dicomcr.codec.j2k import cr_short

    table = Table(box=None, padding=(0, 0), show_edge=False)
    table.add_column(first, no_wrap=True)
    for c in crs:
        table.add_column(cr_short(c), justify="right", min_width=width)
    for row in rows:
        table.add_row(*row)
    out = Console()
    out.print(title, style="italic", highlight=False)
    out.print(table)


def _print_paired(rows: list) -> None:
    """DeLong's paired test against M-CR1 at CR 1, one cell per model and test CR."""
    from dicomcr.experiments.cv import REFERENCE

    paired = [r for r in rows if r.vs_mcr1_diff is not None]
    if not paired:
        why = ("no CR 1 in this run" if all(r.model != REFERENCE for r in rows) else
               f"no model but {REFERENCE}")
        console.print(f"Paired tests against {REFERENCE}: none ({why})")
        return
    crs = sorted({r.test_cr for r in rows})
    body = []
    for model in dict.fromkeys(r.model for r in paired):
        cells = {r.test_cr: f"{r.vs_mcr1_diff:+.2f}".replace("0.", ".")
                 + ("*" if r.vs_mcr1_p < 0.05 else " ") for r in paired if r.model == model}
        body.append([model, *(cells.get(c, "") for c in crs)])
    _compact(f"AUROC minus {REFERENCE}'s at CR 1 on the same breasts (DeLong's "
             "paired test, * p < 0.05; CIs and p in results.csv)", crs, "model", body, 6)


def _print_findings(findings: list, note: str) -> None:
    """The AUROC of each malignant finding type against the test CR, for the curves of the
    figure (each model at its own CR; M-CR1 and the widest mixture at every CR)."""
    from dicomcr.experiments.report import finding_curves

    if not findings:
        console.print(note)
        return
    short = {"mass": "mass", "calcification": "calc", "mass_calcification": "mass+calc"}
    curves = finding_curves(findings)
    crs = sorted({r.test_cr for curve in curves.values() for r in curve})
    body = []
    for name, curve in curves.items():
        body.append([name, *[""] * len(crs)])
        for finding in dict.fromkeys(r.finding for r in curve):
            mine = [r for r in curve if r.finding == finding]
            cells = {r.test_cr: f"{r.auroc:.2f}" for r in mine}
            body.append([f"  {short.get(finding, finding)} ({mine[0].positives})",
                         *(cells.get(c, "") for c in crs)])
    _compact("AUROC of each malignant finding type (n breasts) against all non-malignant "
             "breasts (CIs in findings.csv)", crs, "test CR", body, 5)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A results folder written by dicomcr cv.")],
    out: Annotated[Path | None, typer.Option("--out", help="The HTML file; default "
                                                           "RESULTS/report.html.")] = None,
) -> None:
    """One self-contained HTML page (viewable offline) with the tables and figures of a cv run."""
    from dicomcr.experiments.report import ReportError, write_report

    target = out or results / "report.html"
    check_writable(out)
    try:
        write_report(results, target)
    except ReportError as exc:
        fail(str(exc))
    Console().print(f"report: {target}")


@app.command()
def saliency(
    models: Annotated[list[Path], typer.Argument(help="One or more .dcmcr model files, then the "
                                                      "study folder (last).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: SCs and SR per model and "
                                                    "CR, and saliency.png.")],
    cr: Annotated[list[str] | None, _cr_option("CR to compress the study at before classifying; "
                                               "default: the models' CRs")] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Grad-CAM saliency of one study: SCs and an SR as DICOM, and a figure like the paper's Fig. 3."""
    from dicomcr.inference.offline import saliency_study
    from dicomcr.models.modelfile import ModelFileError, load_model
    from dicomcr.transcode import find_inputs

    if len(models) < 2:
        fail("give at least one model file and then the study folder")
    *model_files, study = models
    try:
        trained = sorted({c for m in model_files for c in load_model(m)[1].trained_crs})
        files = [path for path, _ in find_inputs(study)]
    except (ModelFileError, FileNotFoundError) as exc:
        fail(str(exc))
    crs = _crs(cr) if cr else trained
    try:
        with console.status(f"{len(model_files)} model(s) x {len(crs)} CR(s) on {study}"):
            result = saliency_study(model_files, files, crs, out, device)
    except (ValueError, ModelFileError) as exc:
        fail(str(exc))
    for line in result.problems:
        console.print(f"[yellow]{line}[/]")
    table = Table(title=f"P(malignant) of each breast of {study}")
    for name in ("model", "CR", "breast", "probability"):
        table.add_column(name)
    for (model, c, side), value in sorted(result.probabilities.items()):
        table.add_row(model, f"{c:g}", side, f"{value:.3f}")
    Console().print(table)
    console.print(f"{len(result.written)} DICOM objects under {out}; figure: {result.figure}")


@app.command()
def audit(
    folders: Annotated[list[Path] | None, typer.Argument(help="DICOM folders to audit.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="The node's configuration: its "
                                                "sites, job store and storage are audited.")] = None,
    site_map: Annotated[Path | None, typer.Option(help="CSV with columns folder,site[,guideline]"
                                                  " naming the site of each folder.")] = None,
    results: Annotated[Path | None, typer.Option(help="A `dicomcr cv --cross` results folder "
                                                 "(or its results.json) for the deployed model.")
                       ] = None,
    model: Annotated[Path | None, typer.Option(help="The deployed model, for folder sites (node "
                                               "sites use their configured model).")] = None,
    guideline: Annotated[str | None, typer.Option(help="Judge every site against this guideline "
                                                  "key (UK, DE, CA); default: against all.")] = None,
    guidelines: Annotated[Path | None, typer.Option(help="Your own guideline table (CSV: key, "
                                                    "body, modality, max_cr, source).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the audit as JSON.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the audit as HTML.")] = None,
    fail_on: Annotated[str | None, typer.Option(help="Exit 1 when a site shows a 'violation' "
                                                "(guideline or DICOM rules) or 'degraded' model; "
                                                "an unreadable --results is then an error.")
                       ] = None,
    same_data: Annotated[bool, typer.Option("--same-data", help="The --results come from the "
                                            "sites' own data, although their data fingerprint "
                                            "differs from the deployed model's.")] = False,
) -> None:
    """Audit the compression of every site: achieved CRs, DICOM rules, guidelines, the model."""
    import json

    from dicomcr.audit.audit import (
        audit_sites,
        folder_images,
        load_guidelines,
        node_sites,
        read_results,
    )
    from dicomcr.audit.report import terminal_table, to_json, write_html
    from dicomcr.config import ConfigError, load_config
    from dicomcr.models.modelfile import ModelFileError, load_model

    if fail_on not in (None, "violation", "degraded"):
        fail(f"--fail-on takes violation or degraded, got {fail_on!r}")
    if not folders and config is None:
        fail("nothing to audit: give DICOM folders and/or --config node.yaml")
    if fail_on == "degraded" and results is None:
        fail("--fail-on degraded judges the model at each site's CR: give --results (a "
             "dicomcr cv --cross results folder)")
    check_writable(json_out, html_out)
    problems: list[str] = []
    document = None
    if results is not None:
        try:
            document = read_results(results)
        except ValueError as exc:
            if fail_on:  # a gate must not pass on a typo
                fail(f"{exc}; --fail-on {fail_on} needs it")
            problems.append(f"{exc}; no model verdicts")
    try:
        table = load_guidelines(guidelines)
        if guideline and guideline not in {g.key for g in table}:
            fail(f"no guideline {guideline!r}; the table has {', '.join(g.key for g in table)}")
        files, configured, models, keys = {}, {}, {}, {}
        deployed = load_model(model)[1].__dict__ if model else None
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
        for site in set(files) | set(configured):
            keys[site] = mapped.get(site, guideline)
            if keys[site] and keys[site] not in {g.key for g in table}:
                problems.append(f"site {site}: no guideline {keys[site]!r}; judged against all")
                keys[site] = None
    except (ValueError, ConfigError, ModelFileError) as exc:
        fail(str(exc))
    audits = audit_sites(files, configured, table, keys, document, models, same_data)

    Console().print(terminal_table(audits))
    for a in audits:
        for file, what in a.breaks[:20]:
            console.print(f"{a.site}: {file}: {what}", markup=False, highlight=False)
        for file, what in a.unreadable[:20]:
            console.print(f"{a.site}: {file}: unreadable: {what}", markup=False, highlight=False)
    for line in problems:
        console.print(f"[yellow]{line}[/]")
    if json_out is not None:
        json_out.write_text(json.dumps(to_json(audits, problems, table), indent=1, default=str))
        console.print(f"json: {json_out}")
    if html_out is not None:
        write_html(audits, problems, table, html_out)
        console.print(f"html: {html_out}")
    violated = any(a.guideline_status == "violation" or a.breaks for a in audits)
    degraded = any(a.model and a.model.status == "degraded" for a in audits)
    if (fail_on == "violation" and violated) or (fail_on == "degraded" and degraded):
        raise typer.Exit(code=1)
