"""`slimsearch validate`: check a recipe without running it."""

from __future__ import annotations

import argparse

import yaml

from search.commands.common import add_recipe_args, console, recipe_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `validate` sub-command to the parser."""
    p = sub.add_parser("validate", help="check a study recipe and print it resolved, without running it")
    add_recipe_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch validate`; returns the exit code."""
    config = recipe_from_args(args)
    console.print(f"[green]ok[/]: {args.recipe} is a valid {config.space.type!r} study; run directory {config.run_dir}")
    console.print(yaml.safe_dump(config.dump(), sort_keys=False), highlight=False)
    return 0
