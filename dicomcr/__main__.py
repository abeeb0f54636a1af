"""`python -m dicomcr` runs the installed `dicomcr` command: every command, the node's included.

The whole command line is assembled by the console script's target (services/cli.py); looking it
up by its entry point keeps the library free of imports of the services.
"""

from importlib.metadata import entry_points

(script,) = entry_points(group="console_scripts", name="dicomcr")
script.load()(prog_name="dicomcr")
