"""`slimsearch status`: every trial of a run, front marked."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands.common import console


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `status` sub-command to the parser."""
    p = sub.add_parser("status", help="table of all trials of a run, Pareto front starred")
    p.add_argument("run_dir", type=Path, help="run directory, e.g. runs/digits_blocks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch status`; returns the exit code."""
    from search.results.front import hypervolume
    from search.results.pareto import default_reference, trials_frame
    from search.results.report import print_sparsity, print_summary, trials_table
    from search.study.storage import open_study
    from spaces import get_space

    config, study = open_study(args.run_dir)
    df = trials_frame(study, get_space(config.space.type).describe)
    if df.empty:
        console.print(f"{args.run_dir}: no trials yet")
        return 0
    ref = default_reference(df)
    fr = df[df["front"]]
    console.print(trials_table(df, f"study {config.name}", width=console.width))
    fidelity = config.search.fidelity
    print_summary(console, df, hypervolume(fr["accuracy"], fr["latency_ms"], ref), ref,
                  fidelity.rungs if fidelity else None)
    print_sparsity(console, study.user_attrs.get("sparsity"), args.run_dir)
    return 0
