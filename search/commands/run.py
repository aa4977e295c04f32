"""`slimsearch run`: start or resume a study and print its Pareto front."""

from __future__ import annotations

import argparse

from search.commands.common import add_recipe_args, console, recipe_from_args
from search.commands.pareto import show_front
from search.runner import run_study


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a study (resumes it if its run directory exists)",
        description="Run a study until it has the requested number of completed trials. Running the same recipe "
        "again resumes it.",
    )
    add_recipe_args(p)
    p.add_argument("--trials", type=int, help="completed trials to reach (default: search.trials of the recipe)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db (default: SQLite in the run dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.storage:
        args.overrides.append(f"storage={args.storage}")
    config = recipe_from_args(args)
    console.print(f"study [bold]{config.name}[/] → {config.run_dir}", highlight=False)
    run_study(config, trials=args.trials, timeout=args.timeout, show_progress=not args.no_progress)
    show_front(config.run_dir)
    return 0
