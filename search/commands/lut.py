"""`slimsearch lut build|check`: a latency table measured on this machine, and how well it predicts speed-ups."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from search.commands.common import add_recipe_args, console, recipe_from_args
from search.errors import UsageError

if TYPE_CHECKING:
    from evaluators.latency import LatencyBackend
    from evaluators.latency.table import LatencyTable
    from search.recipe.config import StudyConfig
    from spaces import Space

TABLE_FILE = "latency_table.json"  # search.latency.tables.TABLE_FILE, named here so --help needs no engine


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `lut` sub-command to the parser."""
    p = sub.add_parser(
        "lut", help="build a latency table of a blocks or compress space on this machine, or check its predictions",
        description="Latency tables, keyed by block type (or conv / linear layer), input and output shapes, stride "
        "and options, measured on the recipe's latency backend relative to a reference kernel timed beside each "
        "unit, so they survive the machine's drift. `build` measures the units (a compress recipe: every conv of "
        "the base at every pair of widths a policy can give it, and the staircase picture), fits the network model "
        "and checks itself on networks it was not fitted on; `check` compares predicted and measured speed-ups of "
        "candidates drawn as the study draws them, each timed interleaved with the reference network (the base).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = actions.add_parser("build", help="measure every unit configuration of the space (or of sampled candidates)")
    add_recipe_args(b)
    b.add_argument("--out", type=Path, help=f"table file (default: RUN_DIR/{TABLE_FILE})")
    b.add_argument("--force", action="store_true", help="rebuild a table that already exists at --out")
    b.add_argument("--max-configs", type=int, default=2000,
                   help="measure all unit configurations up to this many, else those of --samples candidates")
    b.add_argument("--samples", type=int, default=200, help="candidates whose units are measured past --max-configs")
    b.add_argument("--networks", type=int, help="whole networks the table's model is fitted on (default: the recipe's "
                   "latency.table_networks, 24)")
    b.add_argument("--holdout", type=int, help="other networks the table checks itself on (default: the recipe's "
                   "latency.table_holdout, 8)")
    b.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for other processes to leave the cores before measuring")
    b.set_defaults(func=run_build)
    c = actions.add_parser("check", help="predicted vs measured speed-up of candidates drawn as the study draws them")
    add_recipe_args(c)
    c.add_argument("--table", type=Path, help=f"table file (default: latency.table, else RUN_DIR/{TABLE_FILE})")
    c.add_argument("--samples", type=int, default=30, help="candidates to predict and measure")
    c.add_argument("--seed", type=int, default=1_000_000, help="seed of the first candidate drawn")
    c.add_argument("--json", action="store_true", help="print the rows and summary as JSON")
    c.set_defaults(func=run_check)


def _open(config: StudyConfig) -> tuple[Space, LatencyBackend]:
    """The recipe's space and its latency backend."""
    from search.latency.tables import require_units
    from search.trial.build import build_space
    from search.trial.context import make_backend, recipe_data

    data = recipe_data(config)
    space = build_space(config, data)
    require_units(space)
    backend = make_backend(config.latency, config.run_dir / "tensorrt")
    return space, backend


def run_build(args: argparse.Namespace) -> int:
    """`slimsearch lut build`: measure the recipe's units, fit the table's model and check it."""
    from evaluators.latency.machine_load import wait_for_quiet
    from search.latency.tables import build_study_table, doubts, keep_in_cache
    from search.trial.steps import StepProgress

    config = recipe_from_args(args)
    if min(args.max_configs, args.samples, args.networks or 0, args.holdout or 0, args.wait) < 0:
        raise UsageError("--max-configs, --samples, --networks, --holdout and --wait must not be negative")
    out = args.out or config.run_dir / TABLE_FILE
    if out.exists() and not args.force:
        console.print(f"{out} exists; `lut check` says how well it predicts, `lut build --force` rebuilds it",
                      highlight=False)
        return 0
    space, backend = _open(config)
    quiet = wait_for_quiet(args.wait, say=lambda m: console.print(m, highlight=False)) if args.wait else None
    if quiet is not None and quiet.busy():
        console.print(f"[bold yellow]the machine is still busy ({quiet.busy()}); measuring anyway, and the table "
                      "will say so[/]", highlight=False)
    with StepProgress("lut build", "measurements", console=console) as step:  # a bar, or lines in a log
        report = build_study_table(config, space, backend, max_configs=args.max_configs, samples=args.samples,
                                   networks=args.networks, holdout=args.holdout, seed=config.seed, progress=step)
    t = report.table
    if quiet is not None and quiet.busy() and not t.protocol.get("busy"):
        t.protocol["busy"] = f"before the build: {quiet.busy()}"
    t.save(out)
    console.print(f"measured {t.meta['coverage']} on {t.backend} {t.backend_version}, {t.device}, {t.precision}, "
                  f"batch {t.batch_size} in {report.seconds:.0f} s (each against a reference kernel, "
                  f"{t.protocol['reference_ms']:.4f} ms now; median spread across rounds "
                  f"{100 * (t.protocol['unit_spread_median'] or 0):.1f}%)", highlight=False)
    if report.skipped:
        console.print(f"skipped {len(report.skipped)} unit configurations the blocks cannot build, e.g. "
                      f"{next(iter(report.skipped.values()))}", highlight=False)
    m = t.model
    console.print(f"model from {m.networks} whole networks, each timed interleaved with the {t.anchor['name']}: "
                  f"reference units = {m.describe()} (leave-one-out speed-up error "
                  f"{m.loo_mape if m.loo_mape is not None else float('nan'):.1f}%)", highlight=False)
    if t.check is not None:
        console.print(f"self-check on {t.check.networks} networks it was not fitted on: speed-up MAPE "
                      f"{t.check.mape:.1f}% (max {t.check.max_error:.1f}%), Spearman {t.check.spearman:.3f} — "
                      + ("passed" if t.check.passed else f"[bold red]over the {t.check.threshold:g}% threshold[/]"),
                      highlight=False)
    load = t.protocol["load"]
    console.print(f"machine during the build: other processes {load['others_cores']:.2f} cores, steal "
                  f"{100 * load['steal_share']:.1f}%, load average {load['loadavg']:.2f}", highlight=False)
    console.print(f"wrote {out} ({len(t.entries)} entries)", highlight=False)
    if args.out is None and config.latency.table == "auto":  # what the recipe's studies look for on this machine
        console.print(f"kept in {keep_in_cache(config, space, backend, t)} for every study of this space, engine and "
                      "device", highlight=False)
    if config.space.type == "compress":
        write_staircase(config, space, t, out.with_name("staircase.png"))
    say_coverage(t, space)
    found = doubts(t)
    if found:
        console.print(f"[bold red]warning:[/] this table is marked: {'; '.join(found)}. Studies will not screen "
                      "candidates with it (unless latency.trust is always); rebuild it on a quiet machine "
                      "with `slimsearch lut build --force`", highlight=False)
    return 0


def write_staircase(config: StudyConfig, space: Space, table: LatencyTable, path: Path) -> None:
    """A compression recipe's staircase: the picture, and per group the widths a study offers."""
    from search.latency.staircase import attach, plot_staircase

    stairs = attach(space, table)
    plot_staircase(stairs, space.offered, path, f"{config.name}: latency staircase per group ({table.backend}, "
                                                f"{table.device}, batch {table.batch_size})")
    kept = sum(len(ws) for ws in space.offered.values())
    every = sum(len(ws) for ws in space.width_choices().values())
    console.print(f"staircase: {kept} of {every} group widths run faster than every wider one and are offered; "
                  f"wrote {path}", highlight=False)
    for group, widths in space.offered.items():
        console.print(f"  {group}: {', '.join(map(str, widths))}", highlight=False)


def say_coverage(table: LatencyTable, space: Space) -> None:
    """One line on how the table covers the space: measured, estimated from neighbours, or not predictable."""
    from search.latency.tables import coverage

    total, measured, lost = coverage(table, space)
    if measured == total:
        return
    console.print(f"coverage: {measured} of the space's {total} unit configurations measured; the other "
                  f"{total - measured - lost} are estimated from measured units of the same block, stride, options "
                  f"and resolution (`lut check` says how well)"
                  + (f"; {lost} have no measured neighbour and cannot be predicted" if lost else ""), highlight=False)


def run_check(args: argparse.Namespace) -> int:
    """`slimsearch lut check`: predicted against measured speed-ups (MAPE, Spearman), interleaved with the base."""
    from search.latency.tables import check_study_table, open_table, vouch
    from search.trial.steps import StepProgress

    config = recipe_from_args(args)
    if args.samples < 2:
        raise UsageError(f"--samples {args.samples}: need at least 2 candidates to rank")
    named = config.latency.table if config.latency.table not in (None, "auto") else None
    path = args.table or Path(named or config.run_dir / TABLE_FILE)
    space, backend = _open(config)
    table = open_table(path, backend, config.latency.precision, config.latency.batch_size,
                       field="--table" if args.table else "latency.table")
    vouch(table, str(path))
    with StepProgress("lut check", "candidates") as step:
        report = check_study_table(config, space, table, backend, samples=args.samples, seed=args.seed, progress=step)
    rows = report.rows
    known = [r for r in rows if r.predicted_speedup is not None]
    summary = {"table": str(path), "candidates": len(rows), "predicted": len(known), "speedup_mape": report.mape,
               "speedup_spearman": report.spearman, "speedup_max_error": report.max_error, "ms_mape": report.ms_mape,
               "measurement_spread_median": report.spread, "load": report.load, "busy": report.busy,
               "device": table.device, "table_created": table.protocol.get("created")}
    if args.json:
        print(json.dumps({"summary": summary, "rows": [r.__dict__ for r in rows]}, indent=1))
        return 0 if len(known) >= 2 else 1
    out = Table(title=f"{path}: predicted vs measured speed-up over the {table.anchor.get('name', 'reference')}, "
                      f"{table.backend}, {table.device}", title_justify="left")
    for col in ("predicted", "measured", "spread", "error", "pred. ms", "meas. ms"):
        out.add_column(col, justify="right", no_wrap=True)
    out.add_column("candidate", overflow="fold")
    for r in rows:
        known_row = r.predicted_speedup is not None
        err = f"{100 * (r.predicted_speedup - r.measured_speedup) / r.measured_speedup:+.1f}%" if known_row else "-"
        out.add_row(f"{r.predicted_speedup:.2f}×" if known_row else "missing units", f"{r.measured_speedup:.2f}×",
                    f"{100 * r.spread:.0f}%", err, f"{r.predicted_ms:.4f}" if known_row else "-",
                    f"{r.measured_ms:.4f}", r.network)
    console.print(out)
    if len(known) < 2:
        console.print(f"[bold red]no MAPE:[/] the table predicts {len(known)} of {len(rows)} candidates (the others "
                      "have units with no measured neighbour); build it with a larger --max-configs or --samples",
                      highlight=False)
        return 1
    left_out = f" ({len(rows) - len(known)} not predictable, left out)" if len(known) < len(rows) else ""
    console.print(f"speed-up: MAPE {report.mape:.1f}% (max {report.max_error:.1f}%), Spearman {report.spearman:.3f} "
                  f"over {len(known)} candidates{left_out}; ms scaled by the base as measured beside each: MAPE "
                  f"{report.ms_mape:.1f}%; measurements spread {100 * report.spread:.1f}% (median across rounds)",
                  highlight=False)
    if report.busy:
        console.print(f"[bold yellow]note:[/] the machine was busy during the check ({report.busy}); the "
                      "measurements are interleaved, so speed-ups stay comparable, but their spread is wider",
                      highlight=False)
    return 0
