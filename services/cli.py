"""The node's commands (`dicomcr serve`, `dicomcr status`), added to the library's Typer app.

The console script `dicomcr` points here, so that the library (dicomcr/) never imports the
services while the one command line still offers everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dicomcr.cli import app, console, fail

from .node import Node
from .store import STATES, JobStore

__all__ = ["app"]


def _config(path: Path | None):
    from dicomcr.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(f"bad configuration:\n{exc}")


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="node.yaml; default: the built-in config.")
                      ] = None,
) -> None:
    """Run the DICOM node: receive, transcode at each site's CR, forward. SIGTERM drains and exits."""
    import logging


    settings = _config(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = Node(settings)
    console.print(f"dicomcr node {settings.node.ae_title} on {settings.node.host}:"
                  f"{settings.node.port}, storage {settings.node.storage}, forwarding to "
                  f"{settings.forward.to}")
    node.serve_forever()


@app.command()
def status(
    config: Annotated[Path | None, typer.Option(help="node.yaml; default: the built-in config.")
                      ] = None,
) -> None:
    """Queue depth and per-site counts from the node's job store."""

    settings = _config(config)
    path = Path(settings.node.storage) / "jobs.sqlite"
    if not path.exists():
        fail(f"no job store at {path}: has the node run with this configuration?")
    store = JobStore(path)
    counts = store.counts()
    store.close()
    table = Table(title=f"dicomcr node {settings.node.ae_title}: {path}")
    table.add_column("site")
    for state in STATES:
        table.add_column(state, justify="right")
    for site, by_state in sorted(counts.items()):
        table.add_row(site, *(str(by_state[s]) for s in STATES))
    Console().print(table)
    queued = sum(c["received"] + c["transcoded"] for c in counts.values())
    Console().print(f"queue depth: {queued}")


@app.command()
def conformance(
    out: Annotated[Path | None, typer.Option(help="Write here instead of printing.")] = None,
) -> None:
    """Print the DICOM Conformance Statement generated from the node's actual contexts."""
    from .conformance import statement

    text = statement()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        console.print(f"wrote {out}")


if __name__ == "__main__":
    app(prog_name="dicomcr")
