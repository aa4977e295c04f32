"""Sub-commands of `slimsearch`; each module offers `register(subparsers)`."""

from search.commands import dashboard, export, finetune, latency, lut, pareto, resume, run, status, validate

COMMANDS = [run, resume, validate, status, pareto, export, finetune, dashboard, latency, lut]
