"""`slimsearch lut build|check`: a latency table measured on this machine, and how well it predicts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.commands.common import add_recipe_args, console, recipe_from_args
from search.errors import UsageError

if TYPE_CHECKING:
    from evaluators.latency import LatencyBackend
    from evaluators.latency.table import LatencyTable
    from search.recipe.config import StudyConfig
    from spaces import Space

TABLE_FILE = "latency_table.json"  # search.trial.staircase.TABLE_FILE, named here so --help needs no engine


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `lut` sub-command to the parser."""
    p = sub.add_parser(
        "lut", help="build a latency table of a blocks or compress space on this machine, or check its predictions",
        description="Latency tables, keyed by block type (or conv / linear layer), input and output shapes, stride "
        "and options, measured on the recipe's latency backend. `build` measures the units (for a compress recipe: "
        "every conv of the base at every pair of widths a policy can give it, and the staircase picture), `check` "
        "compares predicted and measured end-to-end latency of sampled candidates.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = actions.add_parser("build", help="measure every unit configuration of the space (or of sampled candidates)")
    add_recipe_args(b)
    b.add_argument("--out", type=Path, help=f"table file (default: RUN_DIR/{TABLE_FILE})")
    b.add_argument("--max-configs", type=int, default=2000,
                   help="measure all unit configurations up to this many, else those of --samples candidates")
    b.add_argument("--samples", type=int, default=200, help="candidates whose units are measured past --max-configs")
    b.add_argument("--networks", type=int, default=12,
                   help="whole networks measured to fit the per-network correction")
    b.set_defaults(func=run_build)
    c = actions.add_parser("check", help="predicted vs measured end-to-end latency of sampled candidates")
    add_recipe_args(c)
    c.add_argument("--table", type=Path, help=f"table file (default: latency.table, else RUN_DIR/{TABLE_FILE})")
    c.add_argument("--samples", type=int, default=20, help="candidates to predict and measure")
    c.add_argument("--json", action="store_true", help="print the rows and summary as JSON")
    c.set_defaults(func=run_check)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _open(config: StudyConfig) -> tuple[Space, LatencyBackend]:
    """The recipe's blocks space and its latency backend."""
    from search.trial.build import build_space
    from search.trial.context import make_backend, recipe_data
    from search.trial.lut import require_units

    data = recipe_data(config)
    space = build_space(config, data)
    require_units(space)
    backend = make_backend(config.latency, config.run_dir / "tensorrt")
    return space, backend


def run_build(args: argparse.Namespace) -> int:
    """`slimsearch lut build`: measure every unit of the recipe's space and fit the table's correction."""
    from search.trial.lut import build_table
    from search.trial.steps import StepProgress

    config = recipe_from_args(args)
    if min(args.max_configs, args.samples, args.networks) < 0:
        raise UsageError("--max-configs, --samples and --networks must not be negative")
    space, backend = _open(config)
    out = args.out or config.run_dir / TABLE_FILE
    with StepProgress("lut build", "measurements", console=console) as step:  # a bar, or lines in a log
        report = build_table(config, space, backend, max_configs=args.max_configs, samples=args.samples,
                             networks=args.networks, seed=config.seed, progress=step)
    report.table.save(out)
    t, c = report.table, report.table.correction
    console.print(f"measured {report.coverage} on {t.backend} {t.backend_version}, {t.device}, {t.precision}, "
                  f"batch {t.batch_size} in {report.seconds:.0f} s", highlight=False)
    if report.skipped:
        console.print(f"skipped {len(report.skipped)} unit configurations the blocks cannot build, e.g. "
                      f"{next(iter(report.skipped.values()))}", highlight=False)
    fit = f"fit MAPE {c.fit_mape:.1f}%" if c.fit_mape is not None else "no networks measured"
    console.print(f"correction from {c.networks} whole networks: {c.intercept_ms:+.4f} ms {c.per_unit_ms:+.4f} ms/unit "
                  f"+ {c.scale:.3f} × Σ units ({fit})", highlight=False)
    console.print(f"wrote {out} ({len(t.entries)} entries)", highlight=False)
    if args.out is None and config.latency.table == "auto":  # what the recipe's studies look for on this machine
        from search.trial.staircase import keep_in_cache

        console.print(f"kept in {keep_in_cache(config, space, backend, t)} for every study of this base, engine "
                      "and device", highlight=False)
    if config.space.type == "compress":
        write_staircase(config, space, t, out.with_name("staircase.png"))
    say_coverage(report.table, space)
    return 0


def write_staircase(config: StudyConfig, space: Space, table: LatencyTable, path: Path) -> None:
    """A compression recipe's staircase: the picture, and per group the widths a study offers."""
    from search.trial.staircase import attach, plot_staircase

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
    from search.trial.lut import unpredictable

    total, measured, lost = unpredictable(table, space)
    if measured == total:
        return
    console.print(f"coverage: {measured} of the space's {total} unit configurations measured; the other "
                  f"{total - measured - lost} are estimated from measured units of the same block, stride, options "
                  f"and resolution (`lut check` says how well)"
                  + (f"; {lost} have no measured neighbour and cannot be predicted" if lost else ""), highlight=False)


def run_check(args: argparse.Namespace) -> int:
    """`slimsearch lut check`: compare the table's predictions with measured latencies (MAPE, Spearman)."""
    from search.trial.lut import check_table, load_table

    config = recipe_from_args(args)
    if args.samples < 2:
        raise UsageError(f"--samples {args.samples}: need at least 2 candidates to rank")
    named = config.latency.table if config.latency.table not in (None, "auto") else None
    path = args.table or Path(named or config.run_dir / TABLE_FILE)
    space, backend = _open(config)
    table = load_table(path, backend, config.latency.precision, config.latency.batch_size)
    with _progress() as bar:
        task = bar.add_task("measuring", total=args.samples)
        report = check_table(config, space, table, backend, samples=args.samples,
                             progress=lambda done, total, msg: bar.update(task, completed=done, description=msg))
    rows = report.rows
    predicted = [r for r in rows if r.predicted_ms is not None]
    predict_ms = 1e3 * sum(r.predict_s for r in rows) / len(rows)
    measure_s = sum(r.measure_s for r in rows) / len(rows)
    summary = {"table": str(path), "candidates": len(rows), "mape_percent": report.mape, "spearman": report.spearman,
               "predict_ms_per_candidate": predict_ms, "measure_s_per_candidate": measure_s}
    if args.json:
        print(json.dumps({"summary": summary, "rows": [r.__dict__ for r in rows]}, indent=1))
        return 0 if len(predicted) >= 2 else 1
    out = Table(title=f"{path}: predicted vs measured on {table.backend}, {table.device}", title_justify="left")
    for col in ("predicted ms", "measured ms", "error"):
        out.add_column(col, justify="right", no_wrap=True)
    out.add_column("candidate", overflow="fold")
    for r in rows:
        err = "-" if r.predicted_ms is None else f"{100 * (r.predicted_ms - r.measured_ms) / r.measured_ms:+.1f}%"
        pred = "missing units" if r.predicted_ms is None else f"{r.predicted_ms:.4f}"
        out.add_row(pred, f"{r.measured_ms:.4f}", err, r.candidate)
    console.print(out)
    if len(predicted) < 2:
        console.print(f"[bold red]no MAPE:[/] the table predicts {len(predicted)} of {len(rows)} candidates (the "
                      "others have units with no measured neighbour); build it with a larger --max-configs or "
                      "--samples", highlight=False)
        return 1
    unpredicted = f" ({len(rows) - len(predicted)} not predictable, left out)" if len(predicted) < len(rows) else ""
    console.print(f"MAPE {report.mape:.1f}%, Spearman {report.spearman:.3f} over {len(predicted)} candidates"
                  f"{unpredicted}; prediction {predict_ms:.3f} ms per candidate vs measurement {measure_s:.2f} s",
                  highlight=False)
    return 0
