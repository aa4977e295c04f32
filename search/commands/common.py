"""Pieces shared by several sub-commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from search.recipe.config import StudyConfig

# Piped, tables are laid out for 160 columns and no line of text is wrapped, so paths and URLs stay whole.
console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=not sys.stdout.isatty())


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The recipe path and `--set key=value` overrides."""
    parser.add_argument("recipe", type=Path, help="study recipe (YAML), e.g. studies/digits_blocks.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe key, dotted for nested keys (repeatable), e.g. --set search.trials=10",
    )


def add_trial_args(parser: argparse.ArgumentParser, verb: str) -> None:
    """The run directory and which of its trials: `--trial N` or `--pick RULE` (one of them, required)."""
    from search.export.picks import PICKS

    parser.add_argument("run_dir", type=Path, help="run directory, e.g. runs/digits_blocks")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help=f"the trial number to {verb}")
    which.add_argument("--pick", help=f"pick from the front: {', '.join(PICKS)}, 'latency<=MS' or 'accuracy>=A'")


def add_budget_args(parser: argparse.ArgumentParser) -> None:
    """`--trials`, `--timeout` and `--no-progress`, shared by `run` and `resume`."""
    parser.add_argument("--trials", type=positive(int),
                        help="candidates to evaluate (default: the run's own budget, else search.trials of the recipe)")
    parser.add_argument("--timeout", type=positive(float),
                        help="stop starting trials this many seconds after the command starts (training the base "
                             "network and building a latency table count)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar: a line per trial only (for logs)")


def positive(kind: Callable[[str], int | float]) -> Callable[[str], int | float]:
    """An argparse type: a number of `kind` above zero, or a usage message saying what was given."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def tcp_port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    value = positive(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text}")
    return int(value)


def recipe_from_args(args: argparse.Namespace) -> StudyConfig:
    """The recipe named on the command line, with its `--set` overrides, validated."""
    from search.recipe.config import load_config

    return load_config(args.recipe, args.overrides)
