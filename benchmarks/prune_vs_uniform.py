"""At matched latency, is a searched per-group pruning policy more accurate than uniform pruning?

AMC's comparison. One base network is trained once; then two studies prune it with the same importance
(L1), the same adaptive-BN + distilled fine-tune and the same latency measurement: a search over one
keep ratio per prunable group (TPE), and a grid of uniform keep ratios (one ratio for every group,
`granularity: global`, enqueued). For each uniform point, the table gives the most accurate searched
policy that is at most as slow (and, noise-free, at most as many MACs). The searched study's anchors are
uniform policies themselves, so they inform its sampler but are not counted as searched policies.
`--space full` searches the recipe's whole compression space instead (pruning importance, low-rank
factorization and precision too) against uniform pruning at each of the recipe's precisions. The two
studies are timed minutes apart, so each matched pair's ONNX files are then timed again back to back,
alternating, to check that the searched policy is still the faster one once drift between the studies is gone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from benchmarks.results import budget_tag, markdown_table, variant_name, write_section  # noqa: E402
from evaluators.latency import LatencyBackend  # noqa: E402
from evaluators.precision import calibration_batches  # noqa: E402
from search.recipe.config import StudyConfig, load_config  # noqa: E402
from search.results.artifacts import artifact_store, fetch  # noqa: E402
from search.results.record import TrialRecord  # noqa: E402
from search.study.executors.inprocess import run_study  # noqa: E402
from search.study.storage import create_or_load_study  # noqa: E402
from search.trial.context import make_backend, recipe_data  # noqa: E402
from search.trial.scoring.scoring import CALIBRATION_IMAGES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 40
UNIFORM = ["space.rank=null", "space.importance=[l1]"]
PRUNING_ONLY = [*UNIFORM, "space.precision=[fp32]"]


def study_config(recipe: Path, out: Path, tag: str, overrides: list[str]) -> StudyConfig:
    return load_config(recipe, [*overrides, f"name={recipe.stem}-{tag}", f"output_dir={out}"])


def done(study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def sampled(study) -> list[FrozenTrial]:
    """Completed trials the sampler chose: the uniform anchors queued first are left out."""
    return [t for t in done(study) if not TrialRecord.of(t).anchor]


def precision_of(t: FrozenTrial) -> str:
    return TrialRecord.of(t).candidate.get("precision", "fp32")


def policy_mix(trials: list[FrozenTrial]) -> str:
    """How many policies ran at each precision and how many factorized a layer, e.g. `int8 31, fp32 6; 12 low-rank`."""
    precisions: dict[str, int] = {}
    for t in trials:
        p = precision_of(t)
        precisions[p] = precisions.get(p, 0) + 1
    low_rank = sum(1 for t in trials if TrialRecord.of(t).candidate.get("rank"))
    return ", ".join(f"{p} {n}" for p, n in sorted(precisions.items(), key=lambda x: -x[1])) + f"; {low_rank} low-rank"


def best_within(trials: list[FrozenTrial], limit: float, key) -> FrozenTrial | None:
    """The most accurate trial whose `key` is at most `limit`."""
    ok = [t for t in trials if key(t) <= limit]
    return max(ok, key=lambda t: (t.values[0], -t.values[1])) if ok else None


def mean_keep(t: FrozenTrial) -> float:
    keep = list(TrialRecord.of(t).candidate["keep"].values())
    return sum(keep) / len(keep)


def retime(backend: LatencyBackend, shape: tuple[int, ...], batch_size: int, pair: tuple[Path, Path],
           precisions: tuple[str, str], calibration: list, rounds: int = 3) -> tuple[float, float]:
    """Median latency of a (uniform, searched) pair of ONNX files, each at its trial's precision, timed
    alternately in `rounds` rounds."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for path, precision, got in zip(pair, precisions, times):
            got.append(backend.measure(path, shape, precision, batch_size, calibration=calibration).median_ms)
    return statistics.median(times[0]), statistics.median(times[1])


def onnx_pair(pair: tuple[FrozenTrial, FrozenTrial], dirs: tuple[Path, Path], dest: Path) -> tuple[Path, Path] | None:
    """The stored ONNX files of a (uniform, searched) pair of trials; None when either left its front (dropped)."""
    paths = (dest / "uniform.onnx", dest / "searched.onnx")
    dest.mkdir(parents=True, exist_ok=True)
    ok = all(fetch(t, "model.onnx", artifact_store(d), path) for t, d, path in zip(pair, dirs, paths))
    return paths if ok else None


def recipe_path(args: argparse.Namespace) -> Path:
    return ROOT / ("studies/cifar10_resnet_prune.yaml" if args.cifar else "studies/digits_prune.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cifar", action="store_true", help="studies/cifar10_resnet_prune.yaml instead of digits")
    parser.add_argument("--trials", type=int, default=TRIALS,
                        help="searched policies (another budget gets its own section)")
    parser.add_argument("--grid", type=float, nargs="+", default=[0.25, 0.4, 0.55, 0.7, 0.85],
                        help="uniform keep ratios (multiples of the recipe's keep_step)")
    parser.add_argument("--space", choices=["pruning", "full"], default="pruning",
                        help="search keep ratios only (L1, fp32: AMC's comparison) or the recipe's whole space")
    parser.add_argument("--sampler", default="tpe", help="the searched study's sampler")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="12 searched policies, uniform 0.3 / 0.5 / 0.7")
    args = parser.parse_args()
    label = [recipe_path(args).stem, *args.overrides]
    if args.space == "full":
        label.append("full-space")
    if args.sampler != "tpe":
        label.append(f"sampler-{args.sampler}")
    if args.quick:
        args.trials, args.grid = 12, [0.3, 0.5, 0.7]
        args.overrides.append("search.startup_trials=6")
    recipe = recipe_path(args)
    with tempfile.TemporaryDirectory() as tmp:
        searched_cfg = study_config(recipe, Path(tmp), "searched", [
            *(PRUNING_ONLY if args.space == "pruning" else []), *args.overrides, "space.granularity=group",
            f"search.sampler={args.sampler}",
        ])
        searched = run_study(searched_cfg, trials=args.trials, show_progress=False)
        checkpoint = searched_cfg.space.base.checkpoint or searched_cfg.run_dir / "base.pt"
        uniform_cfg = study_config(recipe, Path(tmp), "uniform", [
            *(PRUNING_ONLY if args.space == "pruning" else UNIFORM), *args.overrides, "space.granularity=global",
            "search.sampler=random", f"space.base.checkpoint={checkpoint}",
        ])
        queued = create_or_load_study(uniform_cfg)
        precisions = uniform_cfg.space.precision
        for precision in precisions:
            for keep in args.grid:
                queued.enqueue_trial({"keep.all": keep, **({"precision": precision} if len(precisions) > 1 else {})})
        uniform = run_study(uniform_cfg, trials=len(args.grid) * len(precisions), show_progress=False)
        base = searched.user_attrs["base"]
        policies, grid = sampled(searched), sorted(done(uniform), key=lambda t: (precision_of(t), mean_keep(t)))
        backend, data = make_backend(searched_cfg.latency), recipe_data(searched_cfg)
        lat_batch = searched_cfg.latency.batch_size
        calibration = calibration_batches(data.train, batches=max(1, CALIBRATION_IMAGES // lat_batch),
                                          batch_size=lat_batch, seed=searched_cfg.seed)
        rows = []
        for u in grid:
            by_latency = best_within(policies, u.values[1], lambda t: t.values[1])
            by_macs = best_within(policies, TrialRecord.of(u).macs, lambda t: TrialRecord.of(t).macs)
            row = {
                "uniform keep": f"{mean_keep(u):.2f} {precision_of(u)}", "uniform acc": f"{u.values[0]:.4f}",
                "uniform ms": f"{u.values[1]:.4f}", "uniform MACs": f"{TrialRecord.of(u).macs / 1e6:.2f}M",
                "searched acc (≤ ms)": "-", "searched ms": "-", "Δacc (≤ ms)": "-",
                "searched acc (≤ MACs)": "-", "Δacc (≤ MACs)": "-", "re-timed ms (uniform / searched)": "-",
            }
            if by_latency is not None:
                row.update({"searched acc (≤ ms)": f"{by_latency.values[0]:.4f}",
                            "searched ms": f"{by_latency.values[1]:.4f}",
                            "Δacc (≤ ms)": f"{by_latency.values[0] - u.values[0]:+.4f}"})
            if by_macs is not None:
                row.update({"searched acc (≤ MACs)": f"{by_macs.values[0]:.4f}",
                            "Δacc (≤ MACs)": f"{by_macs.values[0] - u.values[0]:+.4f}"})
            rows.append(row)
            pair = by_latency and onnx_pair((u, by_latency), (uniform_cfg.run_dir, searched_cfg.run_dir),
                                            Path(tmp) / "retime" / str(u.number))
            if pair:
                u_ms, s_ms = retime(backend, data.input_shape, lat_batch, pair,
                                    (precision_of(u), precision_of(by_latency)), calibration)
                row.update({"re-timed ms (uniform / searched)": f"{u_ms:.4f} / {s_ms:.4f}"})
            print(row, flush=True)
    table = markdown_table(rows)
    print(table)
    loads = os.getloadavg()
    busy = (" — above the core count: the CPU was shared with other work, so these latencies were taken on a "
            "loaded machine; matching by latency is noisy there, matching by MACs is not") if loads[0] > (
        os.cpu_count() or 1) else ""
    cfg = searched_cfg
    mode = " — quick" if args.quick else ""
    subset = f" on {cfg.train.max_train_samples} images" if cfg.train.max_train_samples else ""
    budget = [] if args.quick else budget_tag(args.trials, TRIALS)
    write_section(
        f"prune_vs_uniform-{variant_name(recipe, [*label[1:], *budget])}{'-quick' if args.quick else ''}",
        f"Searched {'compression' if args.space == 'full' else 'pruning'} vs uniform pruning at matched latency "
        f"({' '.join(label)}{mode}"
        + (f", {args.trials} trials)" if budget else ")"),
        f"Base `{cfg.space.base.model}` {cfg.space.base.kwargs or ''} "
        + (f"from `{cfg.space.base.checkpoint}`" if cfg.space.base.checkpoint else
           f"trained {cfg.space.base.epochs:g} epochs in the study")
        + f": accuracy {base['accuracy']:.4f}, {base['latency_ms']:.4f} ms, {base['macs'] / 1e6:.2f}M MACs, "
        f"{base['params'] / 1e3:.1f}K params. Every candidate: channel pruning (round to {cfg.space.round_to}), "
        f"adaptive BN on {cfg.train.bn_batches} batches, {cfg.train.epochs:g} epoch(s) of fine-tune{subset} distilled from "
        f"the base (α {cfg.train.kd_alpha:g}, T {cfg.train.kd_temperature:g}), ONNX Runtime with "
        f"{cfg.latency.threads} thread, batch {cfg.latency.batch_size}. Searched: {len(policies)} "
        f"{cfg.search.sampler.upper()} trials "
        f"(after {len(done(searched)) - len(policies)} uniform anchors, not counted) "
        f"over one keep ratio per prunable group in [{cfg.space.keep[0]:g}, {cfg.space.keep[1]:g}]"
        + (f", importance {'/'.join(cfg.space.importance)}, rank {cfg.space.rank} and precision "
           f"{'/'.join(cfg.space.precision)} (chosen: {policy_mix(policies)})" if args.space == "full"
           else ", L1, fp32")
        + f"; uniform: one ratio for every group, L1, not factorized, at {'/'.join(uniform_cfg.space.precision)}. "
        f"Accuracy on the {cfg.data.dataset} validation split "
        "(int8 candidates scored as int8). The two studies are timed minutes apart; "
        "the last column times each latency-matched pair's ONNX files again, alternately, 3 rounds each (median), "
        "so drift between the studies cannot decide which is faster.\n\n"
        f"{table}\n\n"
        f"Load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in loads)} on {os.cpu_count()} "
        f"cores{busy}.",
    )


if __name__ == "__main__":
    main()
