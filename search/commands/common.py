"""Pieces shared by several sub-commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from search.config import StudyConfig, load_config

console = Console(width=None if sys.stdout.isatty() else 160)


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The recipe path and `--set key=value` overrides."""
    parser.add_argument("recipe", type=Path, help="study recipe (YAML), e.g. studies/digits_blocks.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe key, dotted for nested keys (repeatable), e.g. --set search.trials=10",
    )


def recipe_from_args(args: argparse.Namespace) -> StudyConfig:
    return load_config(args.recipe, args.overrides)
