"""Sub-commands of `slimsearch`; each module offers `register(subparsers)`."""

from search.commands import pareto, run, status, validate

COMMANDS = [run, validate, status, pareto]
