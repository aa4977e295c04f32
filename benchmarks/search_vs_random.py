"""Is the search better than random sampling at the same trial budget?

Runs the same study with TPE, NSGA-II and random sampling for several seeds and compares the
hypervolume of each front against one reference point shared by all runs (the worst accuracy
and the worst latency seen in any of them), so the numbers are comparable. `random` is plain random
search, without the anchor policies a compression recipe evaluates first; `random_anchored` is random
sampling after them, which tells what the anchors give apart from the sampler.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import TrialState  # noqa: E402

from benchmarks.results import (  # noqa: E402
    RESULTS,
    budget_tag,
    markdown_table,
    plot_fronts,
    run_name,
    shown,
    variant_name,
    write_section,
)
from search.recipe.config import load_config  # noqa: E402
from search.results.front import hypervolume, pareto_mask  # noqa: E402
from search.study.executors.inprocess import run_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 30
SAMPLER_SETTINGS = {
    "random": ["search.sampler=random", "search.anchors=0"],
    "random_anchored": ["search.sampler=random"],
}


def run_one(recipe: Path, sampler: str, seed: int, trials: int, out: Path, overrides: list[str]) -> np.ndarray:
    """Run one study and return the (accuracy, latency) points of its first `trials` completed trials (a study
    of the `--runs` folder that was taken further with a larger budget is read at this one)."""
    name = f"{run_name(recipe, overrides)}-{sampler}-{seed}"
    settings = SAMPLER_SETTINGS.get(sampler, [f"search.sampler={sampler}"])
    config = load_config(recipe, [*overrides, f"name={name}", f"output_dir={out}", *settings, f"seed={seed}",
                                  f"search.trials={trials}"])
    study = run_study(config, show_progress=False)
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)[:trials]
    return np.array([t.values for t in done], dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", nargs="+", type=Path,
                        default=[ROOT / "studies/digits_blocks.yaml", ROOT / "studies/digits_prune.yaml"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=TRIALS,
                        help="trials per run (another budget gets its own section)")
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"],
                        choices=["tpe", "gp", "nsga2", "random", "random_anchored"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="2 seeds × 12 trials, shorter fine-tunes")
    parser.add_argument("--runs", type=Path, default=None,
                        help="keep every run's study here (default: a temporary folder); runs already "
                             "finished there are reused, so an interrupted benchmark picks up where it stopped")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials = 2, 12
        args.overrides.append("train.epochs=2")
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        for recipe in args.recipes:
            if not recipe.is_file():
                print(f"skipping {recipe}: no such recipe")
                continue
            points = {(s, seed): run_one(recipe, s, seed, args.trials, runs, args.overrides)
                      for s in args.samplers for seed in range(args.seeds)}
            report(recipe, points, args)


def report(recipe: Path, points: dict[tuple[str, int], np.ndarray], args: argparse.Namespace) -> None:
    """Hypervolume per sampler and seed against one shared reference point; table, plot and RESULTS.md section."""
    every = np.concatenate(list(points.values()))
    ref_acc, ref_lat = float(every[:, 0].min()), float(every[:, 1].max()) * 1.01
    box = (1.0 - ref_acc) * ref_lat
    rows = []
    for sampler in args.samplers:
        hvs = []
        for seed in range(args.seeds):
            p = points[(sampler, seed)]
            front = p[pareto_mask(p[:, 0], p[:, 1])]
            hvs.append(hypervolume(front[:, 0], front[:, 1], ref_lat, ref_acc) / box)
        rows.append({
            "sampler": sampler, "seeds": args.seeds, "trials": args.trials,
            "HV mean": f"{statistics.fmean(hvs):.4f}", "HV std": f"{statistics.pstdev(hvs):.4f}",
            "HV per seed": " ".join(f"{h:.4f}" for h in hvs),
        })
        print(recipe.stem, rows[-1], flush=True)
    table = markdown_table(rows)
    print(table)
    budget = budget_tag(args.trials, TRIALS)
    variant = "".join(f" {o}" for o in args.overrides)
    slug = variant_name(recipe, [*args.overrides, *budget])
    title = f"{recipe.stem}{variant if len(variant) <= 40 else ' (overrides)'}" + (
        f", {args.trials} trials" if budget else "")
    fronts = {s: [p[pareto_mask(p[:, 0], p[:, 1])] for p in (points[(s, seed)] for seed in range(args.seeds))]
              for s in args.samplers}
    plot = plot_fronts(RESULTS.parent / f"search_vs_random-{run_name(recipe, [*args.overrides, *budget])}.png",
                       f"{title}: fronts of {args.seeds} seeds per sampler", fronts)
    write_section(
        f"search-vs-random-{slug}", f"Search vs random sampling: {recipe.stem}{variant}"
        + (f", {args.trials} trials" if budget else ""),
        f"`{shown(recipe)}`{variant and ' with' + variant}, every sampler with its recipe settings otherwise "
        "(`random`: plain random search, no anchor policies; `random_anchored`: random after the anchors). "
        "Hypervolume of the "
        "accuracy/latency front, normalized by the box between the shared reference point (worst accuracy, "
        "1.01 × worst latency over all runs of the study) and (accuracy 1, latency 0). Higher is better.\n\n"
        f"{table}\n\n![fronts]({plot.name})",
    )


if __name__ == "__main__":
    main()
