"""`python -m dicomcr` runs the command line."""

from dicomcr.cli import app

app(prog_name="dicomcr")
