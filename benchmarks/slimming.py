"""At matched latency, how does Network Slimming compare with uniform L1 pruning and a searched per-group policy?

One base network is trained once (the searched study trains it); every study below cuts from it with the same
adaptive BN, distilled fine-tune and latency measurement. Network Slimming: the base sparsity-trained with λ·Σ|γ|
on its BatchNorm scales (`space.base.sparsity`, λ = --l1), then one global |γ| threshold at each pruned share of
--grid (`policy: global`, `bn_scale`). Uniform: one L1 keep ratio for every group at the same shares. Searched:
a TPE study over one L1 keep ratio per prunable group (as benchmarks/prune_vs_uniform.py). For each Network
Slimming point the table gives the most accurate uniform and searched policies at most as slow, and the
accuracy differences (Δ). Run it with --set overrides like the other benchmarks, e.g. on CIFAR-10 with a trained
base: `--cifar --set space.base.checkpoint=path/to/base.pt`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import FrozenTrial  # noqa: E402

from benchmarks.prune_vs_uniform import PRUNING_ONLY, best_within, done, sampled, study_config  # noqa: E402
from benchmarks.results import RESULTS, budget_tag, markdown_table, variant_name, write_section  # noqa: E402
from search.recipe.config import StudyConfig  # noqa: E402
from search.results.record import TrialRecord  # noqa: E402
from search.study.executors.inprocess import run_study  # noqa: E402
from search.study.storage import create_or_load_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 40
SMOKE = [  # a whole run in well under a minute: tiny base, one-step trainings, one pruned share
    "space.base.kwargs={widths: [16, 16, 32]}", "space.base.epochs=1", "data.image_size=8", "train.epochs=0.2",
    "train.bn_batches=2", "latency.max_seconds=0.1", "latency.batch_size=1", "search.startup_trials=1",
]


def recipe_path(args: argparse.Namespace) -> Path:
    return ROOT / ("studies/cifar10_resnet_prune.yaml" if args.cifar else "studies/digits_prune.yaml")


def grid_study(recipe: Path, out: Path, tag: str, overrides: list[str], params: list[dict[str, float]],
               progress: bool) -> tuple[StudyConfig, list[FrozenTrial]]:
    """A study that evaluates exactly the queued `params`, one trial each; its config and completed trials."""
    config = study_config(recipe, out, tag, [*overrides, "search.sampler=random", "search.anchors=0"])
    queued = create_or_load_study(config)
    for p in params:
        queued.enqueue_trial(p)
    return config, done(run_study(config, trials=len(params), show_progress=progress))


def keep_of(t: FrozenTrial) -> float:
    keep = list(TrialRecord.of(t).candidate["keep"].values())
    return sum(keep) / len(keep)


def matched(point: FrozenTrial, others: list[FrozenTrial], name: str) -> dict[str, str]:
    """The most accurate of `others` at most as slow as `point`, and its accuracy minus `point`'s."""
    best = best_within(others, point.values[1], lambda t: t.values[1])
    if best is None:
        return {f"{name} acc (≤ ms)": "-", f"{name} ms": "-", f"Δ {name} − slimming": "-"}
    return {f"{name} acc (≤ ms)": f"{best.values[0]:.4f}", f"{name} ms": f"{best.values[1]:.4f}",
            f"Δ {name} − slimming": f"{best.values[0] - point.values[0]:+.4f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", action="store_true", help="studies/cifar10_resnet_prune.yaml instead of digits")
    parser.add_argument("--trials", type=int, default=TRIALS, help="trials of the searched per-group study")
    parser.add_argument("--grid", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75],
                        help="pruned shares of all channels (1 − keep; multiples of the recipe's keep_step)")
    parser.add_argument("--l1", type=float, help="λ of the sparsity training (default: 0.03 on digits, 1e-4 CIFAR)")
    parser.add_argument("--sparsity-epochs", type=float, default=10, help="epochs of sparsity training")
    parser.add_argument("--sparsity-lr", type=float, default=0.05, help="its peak learning rate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 trials, one share: checks the script")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to write the section into")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()
    recipe, progress = recipe_path(args), not args.no_progress
    l1 = args.l1 if args.l1 is not None else (1e-4 if args.cifar else 0.03)
    label = [recipe.stem, *args.overrides, f"l1-{l1:g}"]
    if args.smoke:
        args.trials, args.grid, args.sparsity_epochs = 2, [0.4], 1
        args.overrides = [*SMOKE, *args.overrides]
    keeps = [round(1 - share, 6) for share in args.grid]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        searched_cfg = study_config(recipe, out, "searched", [*PRUNING_ONLY, *args.overrides,
                                                              "space.granularity=group", "search.sampler=tpe"])
        searched = run_study(searched_cfg, trials=args.trials, show_progress=progress)
        checkpoint = searched_cfg.space.base.checkpoint or searched_cfg.run_dir / "base.pt"
        shared = [*PRUNING_ONLY, *args.overrides, f"space.base.checkpoint={checkpoint}"]
        uniform_cfg, uniform = grid_study(recipe, out, "uniform", [*shared, "space.granularity=global"],
                                          [{"keep.all": k} for k in keeps], progress)
        slim_cfg, slimming = grid_study(recipe, out, "slimming", [
            *shared, "space.policy=[global]", "space.importance=[bn_scale]",
            f"space.base.sparsity={{l1: {l1}, epochs: {args.sparsity_epochs}, lr: {args.sparsity_lr}}}",
        ], [{"keep.global": k} for k in keeps], progress)
        base, sparsity = searched.user_attrs["base"], create_or_load_study(slim_cfg).user_attrs.get("sparsity", {})
        policies = sampled(searched)
        rows = []
        for s in sorted(slimming, key=keep_of):
            row = {"pruned share": f"{1 - keep_of(s):.2f}", "slimming acc": f"{s.values[0]:.4f}",
                   "slimming ms": f"{s.values[1]:.4f}", "slimming MACs": f"{TrialRecord.of(s).macs / 1e6:.2f}M",
                   **matched(s, uniform, "uniform"), **matched(s, policies, "searched")}
            rows.append(row)
            print(row, flush=True)
    table = markdown_table(rows)
    print(table)
    cfg, after = searched_cfg, sparsity.get("after", {}).get(f"{l1:g}", {})
    budget = [] if args.smoke else budget_tag(args.trials, TRIALS)
    gamma = (f" (|γ| median {sparsity['before']['p50']:.3g} → {after['p50']:.3g}, {after['below_0.01']:.0%} below "
             f"0.01; the sparsity-trained base's accuracy {after['accuracy']:.4f})" if after else "")
    write_section(
        f"slimming-{variant_name(recipe, [*label[1:], *budget])}{'-smoke' if args.smoke else ''}",
        f"Network Slimming vs uniform and searched pruning at matched latency ({' '.join(label)}"
        + (", smoke)" if args.smoke else f", {args.trials} searched trials)"),
        f"Base `{cfg.space.base.model}` {cfg.space.base.kwargs or ''}: accuracy {base['accuracy']:.4f}, "
        f"{base['latency_ms']:.4f} ms, {base['macs'] / 1e6:.2f}M MACs. Network Slimming: {args.sparsity_epochs:g} "
        f"more epoch(s) of the base at lr {args.sparsity_lr:g} with λ = {l1:g} on every BatchNorm scale{gamma}, then "
        f"one global |γ| threshold per pruned share. Uniform: one L1 keep ratio for every group. Searched: "
        f"{len(policies)} TPE trials over one L1 keep ratio per prunable group (after "
        f"{len(done(searched)) - len(policies)} uniform anchors, not counted). Every candidate: channel pruning "
        f"(round to {cfg.space.round_to}), adaptive BN on {cfg.train.bn_batches} batches, {cfg.train.epochs:g} "
        f"epoch(s) of fine-tune distilled from the base it was cut from (α {cfg.train.kd_alpha:g}), fp32, "
        f"ONNX Runtime with {cfg.latency.threads} thread, batch {cfg.latency.batch_size}; accuracy on the "
        f"{cfg.data.dataset} validation split. Δ: the matched policy's accuracy minus Network Slimming's "
        "(negative: Network Slimming is more accurate at no more latency).\n\n"
        f"{table}\n\nLoad average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
        f"on {os.cpu_count()} cores.",
        path=args.results,
    )


if __name__ == "__main__":
    main()
