"""How well does a latency table predict end-to-end latency, and how much faster is predicting than measuring?

Builds a latency table for a recipe's `blocks` space on its backend (every unit configuration, or the units
of sampled candidates past `--max-configs`), fits the per-network correction on a few whole networks, then
samples other candidates and compares predicted with measured latency: MAPE, Spearman, and the time of one
prediction against one measurement. The sum of isolated unit latencies without the correction is reported
too, to show what the correction buys.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.latency_repeatability import load_note  # noqa: E402
from benchmarks.results import markdown_table, shown, variant_name, write_section  # noqa: E402
from evaluators.latency.table import mape, spearman  # noqa: E402
from search.recipe.config import load_config  # noqa: E402
from search.trial.build import build_space  # noqa: E402
from search.trial.context import make_backend, recipe_data  # noqa: E402
from search.trial.lut import build_table, check_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK_SPACE = [
    "space.blocks=[conv, dwsep, mbconv]",
    "space.stem_width=[16, 16]",
    "space.round_to=16",
    "space.stages=[{stride: 1, width: [16, 32], depth: [1, 2]}, {stride: 2, width: [32, 64], depth: [1, 2]}]",
    "space.options={conv: {kernel_size: [3]}, dwsep: {kernel_size: [3, 5]}, mbconv: {kernel_size: [3], "
    "expand_ratio: [3, 6]}}",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/digits_blocks.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-configs", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200,
                        help="candidates whose units are measured past --max-configs")
    parser.add_argument("--networks", type=int, default=12, help="whole networks for the correction")
    parser.add_argument("--check", type=int, default=30, help="candidates to predict and measure")
    parser.add_argument("--quick", action="store_true",
                        help="a narrowed space (conv/dwsep/mbconv, two stages, widths in steps of 16), 15 checks")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        overrides = QUICK_SPACE + overrides
        args.check, args.networks = 15, 8
    config = load_config(args.recipe, overrides)
    space = build_space(config, recipe_data(config))
    backend = make_backend(config.latency)
    t0 = time.perf_counter()
    report = build_table(config, space, backend, max_configs=args.max_configs, samples=args.samples,
                         networks=args.networks, seed=config.seed)
    build_s = time.perf_counter() - t0
    table = report.table
    check = check_table(config, space, table, backend, samples=args.check)
    known = [r for r in check.rows if r.predicted_ms is not None]
    measured = [r.measured_ms for r in known]
    raw = [r.units_ms for r in known]
    predict_ms = 1e3 * sum(r.predict_s for r in check.rows) / len(check.rows)
    measure_s = sum(r.measure_s for r in check.rows) / len(check.rows)
    c = table.correction
    rows = [
        {"predictor": "table + correction", "MAPE": f"{check.mape:.1f}%", "Spearman": f"{check.spearman:.3f}"},
        {"predictor": "Σ isolated units (no correction)", "MAPE": f"{mape(raw, measured):.1f}%",
         "Spearman": f"{spearman(raw, measured):.3f}"},
    ]
    out = markdown_table(rows)
    facts = markdown_table([{
        "backend": f"{table.backend} {table.backend_version}", "device": table.device,
        "input": "×".join(map(str, (space.in_channels, space.image_size, space.image_size))),
        "units measured": report.measured, "table build s": f"{build_s:.0f}",
        "correction": f"{c.intercept_ms:+.4f} ms {c.per_unit_ms:+.4f} ms/unit + {c.scale:.3f}×Σ ({c.networks} nets)",
        "checked": f"{len(known)} of {len(check.rows)}",
        "measured latency range ms": f"{min(measured):.4f} – {max(measured):.4f}",
        "predict ms / candidate": f"{predict_ms:.3f}", "measure s / candidate": f"{measure_s:.2f}",
    }])
    print(out)
    print(facts)
    space_note = "the narrowed quick space (" + "; ".join(f"`{o}`" for o in QUICK_SPACE) + ")" if args.quick else (
        "the recipe's space")
    extra = "".join(f" {o}" for o in args.overrides)
    body = (f"Recipe `{shown(args.recipe)}` with {space_note}{extra and ' and' + extra}; "
            f"table coverage: {report.coverage}. "
            f"Checked on {args.check} candidates sampled with other seeds than the correction's networks.\n\n"
            f"{out}\n\n{facts}\n\n{load_note()}")
    key = "lut_accuracy" + (f"-{variant_name(args.recipe, args.overrides)}" if args.overrides else "")
    write_section(key, f"Latency table accuracy{extra and ':' + extra}", body)


if __name__ == "__main__":
    main()
