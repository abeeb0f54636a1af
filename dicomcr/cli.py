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


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Folder to write the cohort into.")],
    studies: Annotated[int, typer.Option("--studies", "-n", help="Number of 4-view studies.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same files.")] = 0,
    size: Annotated[str, typer.Option(help="full (the devices' sizes) or small (1/4, for tests).")
                    ] = "full",
    vendor: Annotated[str, typer.Option(help="hologic, ge or mixed (alternating).")] = "mixed",
    workers: Annotated[int, typer.Option(help="Processes; default: all cores.")] = 0,
) -> None:
    """Write a synthetic four-view screening mammography cohort with lesion masks and labels.csv."""
    from dicomcr.phantom import CohortSpec, write_cohort

    try:
        spec = CohortSpec(n_studies=studies, seed=seed, size=size, vendor=vendor)
    except ValueError as exc:
        fail(str(exc))
    workers = workers if workers > 0 else (os.cpu_count() or 1)
    workers = min(workers, studies)
    with _progress("phantom", "studies", disable=studies < 2) as bar:
        task = bar.add_task("phantom", total=studies)
        try:
            summary = write_cohort(spec, out, workers, progress=lambda _: bar.advance(task))
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
    table.add_row("labels", str(summary.out / "labels.csv"))
    Console().print(table)


@app.command()
def transcode(
    source: Annotated[Path, typer.Argument(help="A DICOM file, or a folder (searched recursively).")],
    out: Annotated[Path, typer.Argument(help="Output folder: one sub-folder (series) per CR.")],
    cr: Annotated[list[float] | None, typer.Option("--cr", help="Target compression ratio "
                                                   "(repeatable), as the paper defines it.")] = None,
    ladder: Annotated[str | None, typer.Option(help="A named CR ladder: 'paper' (15 ... 11000).")
                      ] = None,
    lossless: Annotated[bool, typer.Option("--lossless", help="Also write JPEG 2000 lossless.")
                        ] = False,
    workers: Annotated[int, typer.Option(help="Processes; default: all cores.")] = 0,
) -> None:
    """Rewrite images as JPEG 2000 at exact compression ratios, with the derived-image bookkeeping."""
    from concurrent.futures import ProcessPoolExecutor

    from dicomcr.codec.j2k import check_ratio
    from dicomcr.transcode import LADDERS, find_inputs, transcode_file, write_manifest

    targets = list(cr or [])
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
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create the output folder {out}: {exc.strerror}")
    workers = min(workers if workers > 0 else (os.cpu_count() or 1), len(inputs))

    rows = []
    with _progress("transcode", "files") as bar, ProcessPoolExecutor(workers) as pool:
        task = bar.add_task("transcode", total=len(inputs))
        jobs = [pool.submit(transcode_file, path, out, relative, targets, lossless)
                for path, relative in inputs]
        for job in jobs:
            rows += job.result()
            bar.advance(task)
    write_manifest(rows, out / "manifest.csv")

    table = Table(title=f"Transcoded {len(inputs)} file(s) into {out}")
    for name in ("file", "target CR", "achieved CR", "PSNR dB", "status"):
        table.add_column(name, overflow="fold")
    for row in rows[:200]:
        status = "ok" if row.status == "ok" else f"[red]failed: {row.error}[/]"
        table.add_row(row.source, row.target, row.achieved_cr, row.psnr_db, status)
    if len(rows) > 200:
        table.add_row("…", f"{len(rows) - 200} more rows in manifest.csv", "", "", "")
    Console().print(table)
    failed = sorted({row.source for row in rows if row.status != "ok"})
    console.print(f"manifest: {out / 'manifest.csv'}")
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(inputs)} file(s) failed[/]")
        raise typer.Exit(code=1)


@app.command()
def echo(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the peer.")],
    aet: Annotated[str, typer.Option("--aet", help="The peer's (called) AE title.")],
    calling_aet: Annotated[str, typer.Option(help="Our (calling) AE title.")] = "DICOMCR",
) -> None:
    """C-ECHO a DICOM peer: checks that it is reachable and accepts us."""
    from dicomcr.net.scu import NetworkError, Peer
    from dicomcr.net.scu import echo as c_echo

    try:
        peer = Peer.parse(address, aet, calling_aet)
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
) -> None:
    """C-STORE DICOM files to a peer, with progress; exit 1 if any file was not stored."""
    from dicomcr.net.scu import NetworkError, Peer
    from dicomcr.net.scu import send as c_store
    from dicomcr.transcode import find_inputs

    try:
        peer = Peer.parse(to, aet, calling_aet)
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
                    console.print(f"[red]{result.path}: {result.error}[/]")
    except (ValueError, NetworkError) as exc:
        fail(str(exc))
    Console().print(f"stored {len(files) - len(failed)} of {len(files)} file(s) at {peer}")
    if failed:
        raise typer.Exit(code=1)



def _cr_mix(text: str) -> list[float]:
    """'1,15,20' or a range of the paper's CRs, '1-11000'."""
    from dicomcr.codec.j2k import PAPER_LADDER, check_ratio

    try:
        if "-" in text:
            lo, hi = (float(v) for v in text.split("-", 1))
            crs = [float(c) for c in (1, *PAPER_LADDER) if lo <= c <= hi]
        else:
            crs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--cr-mix takes '1,15,20' or '1-11000', got {text!r}")
    if not crs:
        fail(f"--cr-mix {text!r} names no CR")
    for cr in crs:
        if cr != 1.0:
            try:
                check_ratio(cr)
            except ValueError as exc:
                fail(str(exc))
    return sorted(set(crs))


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="A phantom cohort folder (with labels.csv).")],
    out: Annotated[Path, typer.Option("--out", help="The model file to write (.dcmcr).")],
    cr: Annotated[float | None, typer.Option(help="Train at this CR (1 = original).")] = None,
    cr_mix: Annotated[str | None, typer.Option(help="Train on a CR mixture: '1,15,20' or "
                                                    "'1-11000' (the paper's CRs in range).")] = None,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Inputs per batch.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the split, the weights and the order.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    input_size: Annotated[int, typer.Option(help="Model input rows = columns.")] = 256,
    cache: Annotated[Path | None, typer.Option(help="Preprocessed-input cache; default "
                                                    "DATA/.dicomcr-cache.")] = None,
) -> None:
    """Train CNN3 at one CR or a CR mixture; split by patient 7:1:2, early stopping on val AUROC."""
    from dataclasses import asdict

    import numpy as np
    import torch

    from dicomcr.data.cache import breast_inputs
    from dicomcr.data.dataset import fingerprint, read_phantom_labels
    from dicomcr.data.preprocess import Preprocessing
    from dicomcr.experiments.metrics import auroc_delong
    from dicomcr.experiments.splits import split_patients
    from dicomcr.experiments.train import TrainOptions, predict, train_cnn3
    from dicomcr.models.cnn3 import CNN3Spec
    from dicomcr.models.modelfile import ModelInfo, save_model

    if (cr is None) == (cr_mix is None):
        fail("give exactly one of --cr and --cr-mix")
    crs = _cr_mix(cr_mix) if cr_mix is not None else _cr_mix(f"{cr:g}")
    try:
        options = TrainOptions(epochs=epochs, batch_size=batch_size, seed=seed, device=device)
        p = Preprocessing(input_size=(input_size, input_size))
        breasts = read_phantom_labels(data)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    train_ids, val_ids, test_ids = split_patients([b.patient_id for b in breasts],
                                                  [b.malignant for b in breasts], seed)
    console.print(f"{len(breasts)} breasts of {len(set(b.patient_id for b in breasts))} patients; "
                  f"CRs {', '.join(f'{c:g}' for c in crs)}; preprocessing (cached) ...")
    inputs = breast_inputs(breasts, crs, p, cache or Path(data) / ".dicomcr-cache")
    labels = np.array([b.malignant for b in breasts])

    def rows(ids: set[str]) -> np.ndarray:
        return np.array([i for i, b in enumerate(breasts) if b.patient_id in ids], dtype=int)

    def stacked(ids: set[str]) -> tuple[np.ndarray, np.ndarray]:
        index = rows(ids)
        return (np.concatenate([inputs[c][index] for c in crs]),
                np.concatenate([labels[index]] * len(crs)))

    train_x, train_y = stacked(train_ids)
    val_x, val_y = stacked(val_ids)
    spec = CNN3Spec(input_size=p.input_size)
    try:
        with _progress("train", "epochs", status=True) as bar:
            task = bar.add_task("train", total=options.epochs, status="")
            result = train_cnn3(train_x, train_y, val_x, val_y, spec, options, lambda r: bar.update(
                task, advance=1, status=f"loss {r['loss']:.3f} val AUROC {r['val_auroc']:.3f}"))
    except ValueError as exc:
        fail(str(exc))
    test_index = rows(test_ids)
    report = {"best_epoch": result.best_epoch, "val_auroc": result.best_validation_auroc}
    for c in crs:
        scores = predict(result.model, inputs[c][test_index], torch.device("cpu"))
        try:
            estimate = auroc_delong(labels[test_index], scores)
        except ValueError as exc:  # a test split too small for an interval: said, not hidden
            console.print(f"test AUROC at CR {c:g}: not computed ({exc})")
            continue
        report[f"test_auroc_cr{c:g}"] = [estimate.value, estimate.low, estimate.high]
    save_model(result.model, ModelInfo(
        architecture="cnn3", spec=spec.as_dict(), preprocessing=asdict(p), trained_crs=crs,
        data_fingerprint=fingerprint(breasts), validation=report), out)
    table = Table(title=f"CNN3 trained at CR {', '.join(f'{c:g}' for c in crs)}",
                  show_header=False)
    table.add_row("split (patients)", f"{len(train_ids)} / {len(val_ids)} / {len(test_ids)}")
    table.add_row("best epoch", str(result.best_epoch))
    table.add_row("validation AUROC", "n/a (the validation split lacks a class)"
                  if np.isnan(result.best_validation_auroc)
                  else f"{result.best_validation_auroc:.3f}")
    for key, value in report.items():
        if key.startswith("test_auroc"):
            table.add_row(key.replace("_", " "), f"{value[0]:.3f} (95% CI {value[1]:.3f}-"
                                                 f"{value[2]:.3f})")
    table.add_row("model file", str(out))
    Console().print(table)


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A .dcmcr model file.")],
    data: Annotated[Path, typer.Argument(help="A phantom cohort folder (with labels.csv).")],
    cr: Annotated[list[float] | None, typer.Option("--cr", help="Test CR (repeatable; 1 = "
                                                   "original). Default: the model's CRs.")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-breast probabilities (CSV).")
                           ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the AUPRC bootstrap.")] = 0,
    cache: Annotated[Path | None, typer.Option(help="Preprocessed-input cache; default "
                                                    "DATA/.dicomcr-cache.")] = None,
) -> None:
    """AUROC (DeLong 95 % CI) and AUPRC (bootstrap 95 % CI) of a model on every breast of DATA."""
    import csv

    import numpy as np
    import torch

    from dicomcr.data.cache import breast_inputs
    from dicomcr.data.dataset import read_phantom_labels
    from dicomcr.data.preprocess import Preprocessing
    from dicomcr.experiments.metrics import auprc_bootstrap, auroc_delong
    from dicomcr.experiments.train import predict
    from dicomcr.models.modelfile import ModelFileError, load_model

    try:
        network, info = load_model(model)
        breasts = read_phantom_labels(data)
    except (ModelFileError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    crs = sorted({float(c) for c in (cr or info.trained_crs)})
    if any(c < 1 for c in crs):
        fail("a test CR is >= 1 (1 = the original image)")
    p = Preprocessing.from_dict(info.preprocessing)
    inputs = breast_inputs(breasts, crs, p, cache or Path(data) / ".dicomcr-cache")
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
