"""`slimsearch run`: start or resume a study and print its Pareto front."""

from __future__ import annotations

import argparse

from search.commands.common import add_budget_args, add_recipe_args, console, positive, recipe_from_args
from search.commands.pareto import show_front
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `run` sub-command to the parser."""
    p = sub.add_parser(
        "run", help="run a study (resumes it if its run directory exists)",
        description="Run a study until it has the requested number of completed trials. Running the same recipe "
        "again resumes it.",
    )
    add_recipe_args(p)
    add_budget_args(p)
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db (default: SQLite in the run dir)")
    ex = p.add_argument_group("executors", "where trials run (all write to the same Optuna storage)")
    ex.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="local: processes on this machine (default); ray: Ray Tune trials on a local or existing Ray")
    ex.add_argument("--workers", type=positive(int), default=1, metavar="N",
                    help="local executor: N worker processes sharing the study (default 1)")
    ex.add_argument("--address", help="ray executor: address of an existing Ray cluster (default: start a local Ray)")
    ex.add_argument("--cpus-per-trial", type=float, metavar="C", help="ray executor: CPUs per trial (default 1)")
    ex.add_argument("--gpus-per-trial", type=float, metavar="G", help="ray executor: GPUs per trial (default 0)")
    ex.add_argument("--max-concurrent", type=positive(int), metavar="K",
                    help="ray executor: trials running at once (default: cluster CPUs / CPUs per trial)")
    p.set_defaults(func=run)


RAY_ONLY = ("address", "cpus_per_trial", "gpus_per_trial", "max_concurrent")


def check_executor_args(args: argparse.Namespace) -> None:
    """Refuse flags that do not belong to the chosen executor, naming them."""
    if args.executor == "local":
        given = [f"--{k.replace('_', '-')}" for k in RAY_ONLY if getattr(args, k) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only for --executor ray")
    elif args.workers != 1:
        raise UsageError("--workers: only for --executor local (with Ray, use --max-concurrent)")


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch run`; returns the exit code."""
    if args.storage:
        args.overrides.append(f"storage={args.storage}")
    if args.trials:  # the run's budget is frozen with it, so `resume` goes on to the same number
        args.overrides.append(f"search.trials={args.trials}")
    check_executor_args(args)
    from search.study.executors import EXECUTORS, ExecutorOptions

    config = recipe_from_args(args)
    console.print(f"study [bold]{config.name}[/] → {config.run_dir}", highlight=False)
    options = ExecutorOptions(workers=args.workers, address=args.address,
                              cpus_per_trial=1 if args.cpus_per_trial is None else args.cpus_per_trial,
                              gpus_per_trial=args.gpus_per_trial or 0, max_concurrent=args.max_concurrent)
    EXECUTORS[args.executor](config, args.trials, args.timeout, not args.no_progress, options)
    show_front(config.run_dir)
    return 0
