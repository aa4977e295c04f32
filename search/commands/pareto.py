"""`slimsearch pareto`: the front of a run, and its csv / png / html reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands.common import console


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `pareto` sub-command to the parser."""
    p = sub.add_parser("pareto", help="print the Pareto front of a run and write pareto.csv/png/html")
    p.add_argument("run_dir", type=Path, help="run directory, e.g. runs/digits_blocks")
    p.set_defaults(func=run)


def show_front(run_dir: Path) -> None:
    """Print the front and write the reports next to the study."""
    from search.results.front import hypervolume
    from search.results.pareto import default_reference, front, trials_frame, write_reports
    from search.results.report import print_sparsity, rung_summary, trials_table
    from search.study.storage import open_study
    from spaces import get_space

    config, study = open_study(run_dir)
    df = trials_frame(study, get_space(config.space.type).describe)
    if df.empty or not (df["state"] == "COMPLETE").any():
        console.print(f"{run_dir}: no completed trials yet")
        return
    print_sparsity(console, study.user_attrs.get("sparsity"), run_dir)
    fr = front(df)
    ref = default_reference(df)
    hv = hypervolume(fr["accuracy"], fr["latency_ms"], ref)
    console.print(trials_table(fr, f"Pareto front of {config.name}: {len(fr)} of {len(df)} trials", width=console.width))
    infeasible = df.loc[df["feasible"].map(lambda v: v is False), "trial"].tolist()
    if infeasible:
        limits = {k: v for k, v in config.constraints.model_dump().items() if v is not None}
        console.print(f"infeasible (off the front; constraints {limits}): "
                      + ", ".join(f"#{n}" for n in infeasible), highlight=False)
    fidelity = config.search.fidelity
    if fidelity is not None:
        console.print(rung_summary(df, fidelity.rungs), highlight=False)
        tentative = df[df["provisional"]].sort_values("latency_ms")
        if len(tentative):
            console.print(trials_table(tentative, "provisional: below the top rung and not dominated by the front "
                                                  "(accuracy at the rung reached; not final)", width=console.width))
    paths = write_reports(df, run_dir, f"{config.name}: accuracy vs latency", study.user_attrs.get("base"))
    console.print(f"hypervolume {hv:.4f} (reference latency {ref:.4f} ms); wrote "
                  + ", ".join(str(p) for p in paths.values()), highlight=False)


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch pareto`; returns the exit code."""
    show_front(args.run_dir)
    return 0
