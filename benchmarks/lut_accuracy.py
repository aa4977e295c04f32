"""Can a latency table be trusted on this machine, on a busy machine, and later on?

Builds the recipe's latency table (units relative to the reference kernel, the model fitted on whole networks drawn
as the study draws them, its self-check on held-out ones) unless one exists at `--table`, then runs `--checks`
checks of `--samples` of the recipe's own candidates, each predicted and measured interleaved with the reference
network (a compression recipe's base): the error of the predicted speed-up (MAPE, max, Spearman) and of ms scaled
from it, with the spread of the measurements and the machine's load. `--burner` runs a CPU burner on one core during
the checks. Each run adds rows to the section of its recipe, so checks made an hour later, or under load, sit beside
the first ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import command_line, machine, markdown_table, shown, variant_name, write_section  # noqa: E402
from evaluators.latency.table import LatencyTable  # noqa: E402
from search.latency.tables import build_study_table, check_study_table, open_table  # noqa: E402
from search.recipe.config import load_config  # noqa: E402
from search.trial.build import build_space  # noqa: E402
from search.trial.context import make_backend, recipe_data  # noqa: E402
from search.trial.steps import StepProgress  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/cifar10_resnet56_cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--table", type=Path, help="the table to check (built there first where it does not exist)")
    parser.add_argument("--checks", type=int, default=3, help="checks of the same candidates, one after the other")
    parser.add_argument("--samples", type=int, default=30, help="the recipe's candidates per check")
    parser.add_argument("--burner", action="store_true", help="a CPU burner on one core during the checks")
    parser.add_argument("--max-configs", type=int, default=2000,
                        help="build: measure every unit configuration up to this many, else those of 200 candidates")
    args = parser.parse_args()
    config = load_config(args.recipe, args.overrides)
    space = build_space(config, recipe_data(config))
    backend = make_backend(config.latency)
    lat = config.latency
    path = args.table or OUT / f"lut-{variant_name(args.recipe, args.overrides)}.json"
    if not path.is_file():
        with StepProgress("lut build", "measurements") as step:
            report = build_study_table(config, space, backend, max_configs=args.max_configs, seed=config.seed,
                                       progress=step)
        report.table.save(path)
    table = open_table(path, backend, lat.precision, lat.batch_size)
    built = dt.datetime.fromisoformat(table.protocol["created"])
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.burner else None
    rows = []
    try:
        for i in range(args.checks):
            with StepProgress(f"check {i + 1}/{args.checks}", "candidates") as step:
                t0 = time.perf_counter()
                check = check_study_table(config, space, table, backend, samples=args.samples, progress=step)
            after = (dt.datetime.now() - built).total_seconds() / 60
            rows.append({
                "check": f"{i + 1}/{args.checks}", "minutes after build": f"{after:.0f}",
                "burner": "yes" if burner else "no", "others (cores)": f"{check.load['others_cores']:.2f}",
                "candidates": len(check.rows), "speed-up MAPE": f"{check.mape:.2f}%",
                "max error": f"{check.max_error:.1f}%", "Spearman": f"{check.spearman:.3f}",
                "ms MAPE": f"{check.ms_mape:.2f}%", "spread": f"{100 * check.spread:.1f}%",
                "s": f"{time.perf_counter() - t0:.0f}",
            })
            print(rows[-1], flush=True)
            dump = OUT / f"lut-{variant_name(args.recipe, args.overrides)}-check.json"
            dump.write_text(json.dumps([r.__dict__ for r in check.rows], indent=1))
    finally:
        if burner:
            burner.kill()
    write(args, config.name, table, path, rows)


def write(args: argparse.Namespace, name: str, table: LatencyTable, path: Path, rows: list[dict]) -> None:
    """Add the rows, with the command that made them and how their table was built, to the runs kept for the recipe,
    and write its section of RESULTS.md from all of them: one part per table (so per machine), a line on how the
    table was built above its checks."""
    variant = variant_name(args.recipe, args.overrides)
    runs_file = OUT / f"lut-{variant}-runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.is_file() else []
    check, p, m = table.check, table.protocol, table.model
    head = (f"Table `{shown(path)}` ({len(table.entries)} units: {table.meta.get('coverage')}), built "
            f"{p['created']} in {p['seconds']:.0f} s on {table.backend} {table.backend_version}, {table.device}, batch "
            f"{table.batch_size}; other processes during the build: {p['load']['others_cores']:.2f} cores. Model from "
            f"{m.networks} networks: reference units = `{m.describe()}` (leave-one-out speed-up error "
            f"{m.loo_mape or 0:.1f}%); self-check on {check.networks if check else 0} held-out networks: speed-up MAPE "
            f"{check.mape if check else 0:.1f}%, Spearman {check.spearman if check else 0:.3f}.")
    runs += [{**r, "table_created": p["created"], "table": head, "machine": machine(), "command": command_line()}
             for r in rows]
    runs_file.write_text(json.dumps(runs, indent=1))
    parts = []
    for created in dict.fromkeys(r["table_created"] for r in runs):
        mine = [r for r in runs if r["table_created"] == created]
        commands = sorted({r["command"] for r in mine})
        shown_rows = [{k: v for k, v in r.items() if k not in ("table_created", "table", "machine", "command")}
                      for r in mine]
        parts.append(f"### {mine[-1]['machine'].split(', avx')[0]}, table of {created[:16]}\n\n{mine[-1]['table']}"
                     "\n\n" + markdown_table(shown_rows) + "\n\nCommands: " + ", ".join(f"`{c}`" for c in commands))
    body = (f"Each check predicts and measures {args.samples} of the recipe's own candidates (drawn as its study draws "
            "them), every one timed interleaved with the base; `spread` is the median range of the per-round "
            "speed-ups. One part per table, each built and checked on the machine it names.\n\n" + "\n\n".join(parts))
    write_section(f"lut-accuracy-{variant}", f"Latency table accuracy: {name}", body)
    print(body)

if __name__ == "__main__":
    main()
