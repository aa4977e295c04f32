"""Does multi-fidelity search (successive halving on the front) find a better front in the same wall-clock time?

For each seed the same recipe runs as a single-fidelity study (every candidate gets the whole fine-tune) and as
multi-fidelity studies with `search.fidelity` (rungs, η), once for each way of telling the sampler about
candidates stopped below the top rung (`reached`: their accuracy at that rung; `top`: pruned). Every study gets
the same wall-clock budget; only trials that finished inside it count. Reported: the hypervolume of each final
front (top-rung candidates only) against one reference point shared by all runs of the recipe, candidates
evaluated per hour, and, from the multi-fidelity studies' own trials, each rung's Spearman rank correlation with
the top rung over the candidates that reached the top.

`--parallel` runs a seed's studies at the same time, each on its share of the cores and with its own latency lock,
so every mode sees the same load over the same wall clock; the timings they measure then include the other
studies' load, so where the recipe has a latency table the hypervolume is also computed on the table's predicted
latency (the same model for every mode, untouched by load).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import FrozenTrial  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from benchmarks.results import RESULTS, markdown_table, plot_fronts, run_name, shown, variant_name, write_section  # noqa: E402
from search.recipe.config import load_config  # noqa: E402
from search.results.front import contenders, front_of, hypervolume, pareto_mask  # noqa: E402
from search.results.record import TrialRecord, evaluated  # noqa: E402
from search.study.executors.inprocess import run_study  # noqa: E402
from search.study.storage import open_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("single", "reached", "top")


def within(trials: list[FrozenTrial], start: dt.datetime, budget: float) -> list[FrozenTrial]:
    """The trials that finished inside the budget."""
    end = start + dt.timedelta(seconds=budget)
    return [t for t in trials if t.datetime_complete is not None and t.datetime_complete <= end]


class LoadWatch:
    """The highest 1-minute load average seen while a study ran (sampled every 5 s): other work on the machine
    slows one study and not another, so the table shows it."""

    def __init__(self) -> None:
        self.peak, self._stop = 0.0, threading.Event()

    def _watch(self) -> None:
        while not self._stop.wait(5.0):
            self.peak = max(self.peak, os.getloadavg()[0])

    def __enter__(self) -> "LoadWatch":
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_one(
    recipe: Path, mode: str, seed: int, args: argparse.Namespace, out: Path
) -> tuple[list[FrozenTrial], float]:
    """One study under the budget: its trials that finished inside it, and the peak load average meanwhile."""
    fidelity = ["search.fidelity=null"] if mode == "single" else [
        f"search.fidelity={{rungs: [{', '.join(f'{r:g}' for r in args.rungs)}], eta: {args.eta:g}, report: {mode}}}"
    ]
    name = f"{run_name(recipe, [*args.overrides, *fidelity])}-{mode}-{seed}"
    config = load_config(recipe, [*args.overrides, *fidelity, f"name={name}", f"output_dir={out}", f"seed={seed}"])
    if (config.run_dir / "config.yaml").is_file():
        _, study = open_study(config.run_dir)
        if "benchmark_start" in study.user_attrs:  # a finished run of an earlier invocation
            start = dt.datetime.fromisoformat(study.user_attrs["benchmark_start"])
            return within(study.get_trials(deepcopy=False), start, args.budget), study.user_attrs["benchmark_load"]
    start, load = dt.datetime.now(), LoadWatch()
    with load:
        study = run_study(config, trials=1_000_000, timeout=args.budget, show_progress=False)
    study.set_user_attr("benchmark_start", start.isoformat())
    study.set_user_attr("benchmark_load", load.peak)
    print(f"{name}: {sum(evaluated(t) for t in study.trials)} candidates", flush=True)
    return within(study.get_trials(deepcopy=False), start, args.budget), load.peak


def run_alone(recipe: Path, mode: str, seed: int, args: argparse.Namespace, out: Path,
              threads: int) -> tuple[list[FrozenTrial], float]:
    """`run_one` in a process of its own (`--parallel`): `threads` torch threads and a latency lock of its own."""
    tempfile.tempdir = tempfile.mkdtemp(prefix=f"mf-{mode}-{seed}-")
    args.overrides = [*args.overrides, f"train.threads={threads}"]
    return run_one(recipe, mode, seed, args, out)


def run_seed(args: argparse.Namespace, seed: int, runs: Path) -> dict[str, tuple[list[FrozenTrial], float]]:
    """Every mode's study of one seed: one after the other, or all at once with `--parallel`."""
    if not args.parallel:
        return {mode: run_one(args.recipe, mode, seed, args, runs) for mode in args.modes}
    threads = max(1, (os.cpu_count() or 1) // len(args.modes))
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(args.modes), mp_context=spawn) as pool:
        jobs = {mode: pool.submit(run_alone, args.recipe, mode, seed, args, runs, threads) for mode in args.modes}
        return {mode: job.result() for mode, job in jobs.items()}


def front_points(trials: list[FrozenTrial], predicted: bool = False) -> np.ndarray:
    """(accuracy, latency) of the final front: top-rung, feasible, non-dominated; `predicted`: at the latency the
    study's table predicts for each candidate instead of the measured one."""
    if not predicted:
        return np.array([t.values for t in front_of(trials)], dtype=float).reshape(-1, 2)
    points = np.array([(t.values[0], TrialRecord.of(t).predicted_latency_ms) for t in contenders(trials)],
                      dtype=float).reshape(-1, 2)
    return points[pareto_mask(points[:, 0], points[:, 1])] if len(points) else points


def rank_correlations(trials: list[FrozenTrial], rungs: list[float]) -> list[tuple[int, float]]:
    """Per rung below the top: (candidates that reached the top, Spearman of that rung's accuracy with the top's)."""
    top = [TrialRecord.of(t).rungs for t in trials if evaluated(t) and TrialRecord.of(t).rung == len(rungs) - 1]
    top = [r for r in top if r and len(r) == len(rungs)]
    out = []
    for rung in range(len(rungs) - 1):
        if len(top) < 3:
            out.append((len(top), float("nan")))
            continue
        rho = spearmanr([r[rung]["accuracy"] for r in top], [r[-1]["accuracy"] for r in top]).statistic
        out.append((len(top), float(rho)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/digits_blocks.yaml")
    parser.add_argument("--rungs", type=float, nargs="+", default=[1, 4],
                        help="fine-tune epochs per rung; the last must equal the recipe's train.epochs")
    parser.add_argument("--eta", type=float, default=3)
    parser.add_argument("--budget", type=float, default=180, help="wall-clock seconds per study")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", type=Path, default=None,
                        help="keep every study here (default: a temporary folder); finished ones are reused")
    parser.add_argument("--parallel", action="store_true",
                        help="run a seed's studies at once, each on its share of the cores (see above)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 40 s, shorter fine-tunes (digits)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budget, args.rungs = 2, 40, [0.5, 2]
        args.overrides.append("train.epochs=2")
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        done = {(mode, seed): result for seed in range(args.seeds)
                for mode, result in run_seed(args, seed, runs).items()}
        report(args, {k: v[0] for k, v in done.items()}, {k: v[1] for k, v in done.items()})


def mean_of(values: dict[tuple[str, int], float], mode: str) -> float:
    """The mean over seeds of one mode's values."""
    return statistics.fmean(v for (m, _), v in values.items() if m == mode)


def normalized_hypervolumes(fronts: dict[tuple[str, int], np.ndarray]) -> dict[tuple[str, int], float]:
    """Each front's hypervolume against one reference point shared by all (worst front accuracy, 1.01 × worst front
    latency), divided by the box between that point and (accuracy 1, latency 0)."""
    every = np.concatenate([f for f in fronts.values() if len(f)])
    ref_acc, ref_lat = float(every[:, 0].min()), float(every[:, 1].max()) * 1.01
    box = (1.0 - ref_acc) * ref_lat
    return {k: hypervolume(f[:, 0], f[:, 1], ref_lat, ref_acc) / box for k, f in fronts.items()}


def report(
    args: argparse.Namespace, trials: dict[tuple[str, int], list[FrozenTrial]], loads: dict[tuple[str, int], float]
) -> None:
    """Hypervolume, throughput and rank correlations per mode; table, plot and RESULTS.md section."""
    fronts = {k: front_points(v) for k, v in trials.items()}
    hv = normalized_hypervolumes(fronts)
    predicted = all(TrialRecord.of(t).predicted_latency_ms is not None for v in trials.values()
                    for t in contenders(v))
    hv_table = normalized_hypervolumes({k: front_points(v, predicted=True) for k, v in trials.items()}) \
        if predicted else {}
    rows, hv_mean = [], {}
    for mode in args.modes:
        hvs = [hv[(mode, s)] for s in range(args.seeds)]
        per_hour = [sum(evaluated(t) for t in trials[(mode, s)]) * 3600 / args.budget for s in range(args.seeds)]
        top = [sum(TrialRecord.of(t).at_top and evaluated(t) for t in trials[(mode, s)]) for s in range(args.seeds)]
        load = [loads[(mode, s)] for s in range(args.seeds)]
        hv_mean[mode] = statistics.fmean(hvs)
        rows.append({
            "mode": mode, "HV mean": f"{hv_mean[mode]:.4f}", "HV std": f"{statistics.pstdev(hvs):.4f}",
            "HV per seed": " ".join(f"{h:.4f}" for h in hvs),
            "vs single": f"{hv_mean[mode] / hv_mean['single']:.2f}×" if "single" in hv_mean else "",
            **({} if not hv_table else {
                "HV at table latency, per seed": " ".join(f"{hv_table[(mode, s)]:.4f}" for s in range(args.seeds)),
                "vs single (table)": f"{mean_of(hv_table, mode) / mean_of(hv_table, 'single'):.2f}×"
                if "single" in args.modes else "",
            }),
            "candidates/h": f"{statistics.fmean(per_hour):.0f}", "at the top rung": " ".join(map(str, top)),
            "peak load": " ".join(f"{x:.1f}" for x in load),
        })
        print(rows[-1], flush=True)
    corr_rows = []
    for mode in (m for m in args.modes if m != "single"):
        pooled = [t for s in range(args.seeds) for t in trials[(mode, s)]]
        for rung, (n, rho) in enumerate(rank_correlations(pooled, args.rungs)):
            corr_rows.append({"mode": mode, "rung": rung, "epochs": f"{args.rungs[rung]:g}",
                              "candidates at the top": n, "Spearman with the top rung": f"{rho:.3f}"})
    table, corr = markdown_table(rows), markdown_table(corr_rows)
    print(table, corr, sep="\n\n")
    fidelity = [f"rungs {' '.join(f'{r:g}' for r in args.rungs)}", f"eta {args.eta:g}"]
    slug = variant_name(args.recipe, [*args.overrides, *fidelity, f"{args.budget:g}s"])
    plot = plot_fronts(RESULTS.parent / f"multifidelity-{slug[:90]}.png",
                       f"{args.recipe.stem}: final fronts after {args.budget:g} s, {args.seeds} seeds",
                       {m: [fronts[(m, s)] for s in range(args.seeds)] for m in args.modes})
    variant = "".join(f" {o}" for o in args.overrides)
    write_section(
        f"multifidelity-{slug}", f"Multi-fidelity vs single-fidelity: {args.recipe.stem}{variant}",
        f"`{shown(args.recipe)}`{variant and ' with' + variant}; rungs {args.rungs} epochs, η {args.eta:g}; "
        f"{args.budget:g} s of wall-clock per study, {args.seeds} seeds, trials counted when they finished inside "
        "it; `peak load` is the highest 1-minute load average during each seed's study (a study keeps about 1-2 of "
        "the cores busy; more means other work was running). `single`: every candidate gets the whole fine-tune; "
        "`reached`: the sampler sees a stopped candidate's "
        "accuracy at its rung; `top`: stopped candidates are pruned trials. Hypervolume of the final front "
        "(top-rung candidates only), normalized by the box between the shared reference point (worst front "
        "accuracy, 1.01 × worst front latency over all runs) and (accuracy 1, latency 0); higher is better"
        + ("; `at table latency`: the same on the latency the study's table predicts for each candidate"
           if hv_table else "") + (". The studies of a seed ran at the same time, each on its share of the cores "
                                   "(`--parallel`)" if args.parallel else "") + ".\n\n"
        f"{table}\n\nRank correlation of each rung with the top rung, over the candidates that reached the top "
        f"(all seeds pooled):\n\n{corr}\n\n![fronts]({plot.name})",
    )


if __name__ == "__main__":
    main()
