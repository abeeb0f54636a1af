"""`python -m services`: the whole `dicomcr` command line, the node's commands included (the same
app as the `dicomcr` console script)."""

from .cli import app

app(prog_name="dicomcr")
