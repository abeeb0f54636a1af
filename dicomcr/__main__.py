"""`python -m dicomcr`: the library's commands (phantom, transcode, echo, send, train, cv,
evaluate, model-info, report, saliency, audit), e.g. `torchrun ... -m dicomcr train` on each
machine. The node's commands (serve, worker, status, retry, conformance, demo) are the services':
the `dicomcr` console script and `python -m services` run every command. The library never
imports the services, so this app is the library's own (dicomcr.cli.app).
"""

from .cli import app

app(prog_name="dicomcr")
