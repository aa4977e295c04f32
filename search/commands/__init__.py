"""Sub-commands of `slimsearch`; each module offers `register(subparsers)`."""

from search.commands import dashboard, export, latency, lut, pareto, resume, run, status, validate

COMMANDS = [run, resume, validate, status, pareto, export, dashboard, latency, lut]
