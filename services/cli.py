"""The one `dicomcr` command line: the library's commands (dicomcr.cli) and the node's (serve, worker,
status, retry, conformance, demo), composed with Typer's `add_typer` (`make_app`). The console script and
`python -m services` run it; `python -m dicomcr` the library's alone (the library never imports services)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dicomcr.cli import HELP, check_writable, commands, console, fail, make_app, path_line, refused

from .node import Node, NodeError

node_app = typer.Typer()  # the node's commands, beside the library's in `app`
app = make_app(HELP, commands, node_app)


def _config(path: Path | None):
    from dicomcr.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(f"bad configuration:\n{exc}")


@node_app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="node.yaml; default: the built-in config.")] = None,
) -> None:
    """Run the DICOM node: receive, transcode at each site's CR, forward. SIGTERM drains and exits."""
    import logging

    settings = _config(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = Node(settings)
    console.print(f"dicomcr node {settings.node.ae_title} on {settings.node.host}:{settings.node.port}, "
                  f"storage {settings.node.storage}, forwarding to {settings.forward.to}")
    with refused(NodeError):
        code = node.serve_forever()
    if code:
        raise typer.Exit(code)


@node_app.command()
def worker(
    config: Annotated[Path | None, typer.Option(help="The node's node.yaml (node.queue names the broker).")
                      ] = None,
    queues: Annotated[str, typer.Option(help="What to take: transcode, infer, or transcode,infer.")
                      ] = "transcode,infer",
    concurrency: Annotated[int | None, typer.Option(min=1, help="Processes; default: one per core, one "
                                                              "for infer only.")] = None,
) -> None:
    """Run a worker that takes the node's tasks from RabbitMQ (node.queue: amqp://...).

    Run it on any machine that mounts the node's storage at the same path."""
    from .worker import WorkerError, run_worker
    from .workqueue import TaskKind

    settings = _config(config)
    try:
        kinds = [TaskKind(name.strip()) for name in queues.split(",") if name.strip()]
    except ValueError:
        fail(f"--queues {queues!r}: name transcode, infer, or both separated by a comma")
    if not kinds:
        fail("--queues names no queue: transcode, infer, or both")
    with refused(WorkerError):
        run_worker(settings, kinds, concurrency)


@node_app.command()
def status(
    config: Annotated[Path | None, typer.Option(help="node.yaml; default: the built-in config.")
                      ] = None,
    failed: Annotated[bool, typer.Option("--failed", help="List what failed, with why.")
                      ] = False,
) -> None:
    """Queue depth and per-site counts from the node's job store: its images and the objects it
    derived (saliency SCs, the SR) apart, and its studies."""
    from dicomcr.jobs import Storage, StoreError
    from dicomcr.jobs.admin import read_failed, read_status

    settings = _config(config)
    storage = Storage(Path(settings.node.storage))
    out = Console(width=80)  # readable in a log or a small window
    try:
        if failed:
            out.print("\n".join(read_failed(storage).lines()), highlight=False)
        else:
            report = read_status(storage)
            out.print(report.table(f"dicomcr node {settings.node.ae_title}"))
            out.print("\n".join(report.summary()), highlight=False)
    except FileNotFoundError:
        fail(f"no job store at {storage.store}: has the node run with this configuration?")
    except StoreError as exc:
        fail(f"cannot read the job store: {exc}")


@node_app.command()
def retry(
    uids: Annotated[list[str] | None, typer.Argument(help="SOP Instance UIDs (or Study Instance "
                                                          "UIDs of failed inferences).")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed item.")] = False,
    current_policy: Annotated[bool, typer.Option(
        "--current-policy", help="Transcode at the site's policy in the configuration now, "
                                 "not at the one recorded when the image was received.")] = False,
    config: Annotated[Path | None, typer.Option(help="node.yaml; default: the built-in config.")
                      ] = None,
) -> None:
    """Give failed items another go (see `dicomcr status --failed`); a running node takes them
    up. A source kept in quarantine goes back to the spool. An image is transcoded at the policy
    recorded when it was received unless --current-policy is given."""
    from dicomcr.jobs import Storage, StoreError
    from dicomcr.jobs.admin import retry_failed

    if not uids and not all_failed:
        fail("name the UIDs to retry, or --all-failed")
    settings = _config(config)
    storage = Storage(Path(settings.node.storage))
    if not storage.store.is_file():
        fail(f"no job store at {storage.store}: has the node run with this configuration?")

    try:
        report = retry_failed(storage, None if all_failed else uids, settings.policy_of, current_policy)
    except (StoreError, OSError) as exc:
        fail(f"cannot retry: {exc}")
    for item in report.retried:
        at = "" if item.policy is None else f" at policy {item.policy}"
        note = "" if item.current is None or current_policy else \
            f" (as received; the site's policy is now {item.current}: --current-policy uses it)"
        console.print(f"retrying {item.what} {item.uid}{at}{note}", highlight=False)
    if not report.retried and not report.unknown:
        console.print("nothing failed", highlight=False)
    if report.unknown:
        fail("not failed (see dicomcr status --failed): " + ", ".join(report.unknown))


@node_app.command()
def conformance(
    out: Annotated[Path | None, typer.Option(help="Write here instead of printing.")] = None,
) -> None:
    """Print the DICOM Conformance Statement generated from the node's actual contexts."""
    from .conformance import statement

    text = statement()
    if out is None:
        typer.echo(text, nl=False)
    else:
        check_writable(out)
        out.write_text(text)
        path_line(f"wrote {out}")


@node_app.command()
def demo(
    folder: Annotated[Path, typer.Argument(help="Working folder (reused: a model already there is not "
                                                "trained again).")] = Path("dicomcr-demo"),
    studies: Annotated[int, typer.Option(help="Small phantom studies to send through the node.")] = 4,
    train_studies: Annotated[int, typer.Option(help="Small phantom studies the quick model trains on.")
                             ] = 80,
    epochs: Annotated[int, typer.Option(help="Epochs of the quick model.")] = 8,
    test_studies: Annotated[int, typer.Option(help="Small held-out phantom studies the model is tested "
                                                   "on at CR 1 and each site's CR, for the audit's model "
                                                   "verdict.")] = 30,
) -> None:
    """The whole product on built-in defaults: phantom, model, Orthanc, the node, a summary."""
    from .demo import run_demo

    if studies < 1 or train_studies < 10 or epochs < 1 or test_studies < 12:
        fail("--studies >= 1, --train-studies >= 10, --epochs >= 1 and --test-studies >= 12 "
             "(two malignant breasts at least, for a confidence interval) are required")
    try:
        run_demo(folder, _step, studies, train_studies, epochs, _show, test_studies=test_studies)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: servers stopped[/]")
        raise typer.Exit(code=130) from None
    except (RuntimeError, OSError, ValueError) as exc:
        fail(f"the demo stopped: {exc}")


@contextlib.contextmanager
def _step(label: str) -> Iterator[None]:
    """One long step of the demo: a spinner, then "done" with the time it took."""
    start = time.monotonic()
    with console.status(f"[bold]{label}[/] ..."):
        yield
    console.print(f"[green]done[/] {label} ({time.monotonic() - start:.0f} s)")


def _show(summary) -> None:
    """The demo's summary (see demo.summary_view); on a terminal Orthanc then stays up until Ctrl-C."""
    from .demo import summary_view

    for note in summary.notes:
        console.print(f"[yellow]{note}[/]")
    Console().print(summary_view(summary))
    console.print("The probabilities come from a quick model on a phantom: they show the "
                  "plumbing, not a diagnosis. Not for diagnostic use.")
    if summary.destination.startswith("http") and sys.stdin.isatty():
        console.print(f"Orthanc stays up at {summary.destination}: press Ctrl-C to stop it.")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)


if __name__ == "__main__":
    app(prog_name="dicomcr")
