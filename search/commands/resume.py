"""`slimsearch resume`: go on with the study of a run directory, from its frozen recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands.common import console
from search.commands.pareto import show_front
from search.runner import run_study
from search.study import load_run_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resume", help="resume the study of a run directory (after a crash, a kill or a timeout)",
        description="Resume a study from the recipe frozen in RUN_DIR/config.yaml: trials left running by a "
        "stopped process are failed and run again, and the study goes on until it has the requested number "
        "of completed trials.",
    )
    p.add_argument("run_dir", type=Path, help="run directory, e.g. runs/digits_blocks")
    p.add_argument("--trials", type=int, help="completed trials to reach (default: search.trials of the recipe)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_run_config(args.run_dir)
    console.print(f"resuming study [bold]{config.name}[/] in {args.run_dir}", highlight=False)
    run_study(config, trials=args.trials, timeout=args.timeout, show_progress=not args.no_progress)
    show_front(args.run_dir)
    return 0
