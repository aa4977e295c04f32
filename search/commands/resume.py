"""`slimsearch resume`: go on with the study of a run directory, from its frozen recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands.common import add_budget_args, console
from search.commands.pareto import show_front


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `resume` sub-command to the parser."""
    p = sub.add_parser(
        "resume", help="resume the study of a run directory (after a crash, a kill or a timeout)",
        description="Resume a study from the recipe frozen in RUN_DIR/config.yaml: trials left running by a "
        "stopped process are failed and run again, and the study goes on to the budget of the run it resumes "
        "(the last --trials given to run or resume, else the recipe's search.trials), or to --trials.",
    )
    p.add_argument("run_dir", type=Path, help="run directory, e.g. runs/digits_blocks")
    add_budget_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch resume`; returns the exit code."""
    from search.study.executors import EXECUTORS, ExecutorOptions
    from search.study.storage import load_run_config

    config = load_run_config(args.run_dir)
    if args.trials:  # a new budget for the run, frozen in its place
        config.search.trials = args.trials
    console.print(f"resuming study [bold]{config.name}[/] in {args.run_dir}", highlight=False)
    EXECUTORS["local"](config, args.trials, args.timeout, not args.no_progress, ExecutorOptions())
    show_front(args.run_dir)
    return 0
