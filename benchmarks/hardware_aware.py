"""Hardware-aware compression on a trained base: methods compared at measured speed-up targets on the study's engine.

On the recipe's base and engine (default: the shared ResNet-56 on CIFAR-10, ONNX Runtime, 1 thread, batch 1):
1. the per-layer latency table (built once, cached) and its predictor checked on the recipe's own candidates
   (MAPE, Spearman), the staircase of every group (PNG) with measured points for three groups;
2. at each speed-up target, measured interleaved with the base: uniform L1 pruning at its best rounding (round_to
   4, 8 or 16), Torch-Pruning's global L1 pruning (MetaPruner, ratio bisected to the target), the latency-aware
   greedy policy (its predicted target bisected to the measured one) and the searched policy (a study of the
   recipe run here; the most accurate front member that meets the target, re-measured interleaved);
3. every chosen network fine-tuned with the same budget (adaptive BN, then `--finetune-epochs` distilled from the
   base) and scored on the test split; all of them timed once more, interleaved with the base, for the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from benchmarks.realscale.baselines import tp_global_l1  # noqa: E402
from benchmarks.results import markdown_table, shown, write_section  # noqa: E402
from evaluators.cost import measure_cost  # noqa: E402
from evaluators.latency.timing import interleaved  # noqa: E402
from evaluators.to_onnx import export_onnx  # noqa: E402
from evaluators.train import FineTune, evaluate, placed, recalibrate_bn  # noqa: E402
from search.latency.staircase import lower_edges, plot_staircase, staircase  # noqa: E402
from search.latency.tables import check_study_table  # noqa: E402
from search.recipe.config import load_config  # noqa: E402
from search.results.record import TrialRecord  # noqa: E402
from search.study.executors.inprocess import run_study  # noqa: E402
from search.trial.build import build_context  # noqa: E402
from search.trial.locks import MachineLock  # noqa: E402
from search.trial.scoring.scoring import train_settings  # noqa: E402
from spaces.compress import compress  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"
KEEP_GRID = [round(0.2 + 0.05 * i, 2) for i in range(17)]  # uniform keep shares, mildest last
TP_GRID = [round(0.025 * i, 3) for i in range(1, 39)]  # Torch-Pruning pruning ratios, mildest first


class Timer:
    """Speed-ups of networks over the base, each timed interleaved with it on the study's ONNX Runtime backend."""

    def __init__(self, backend: object, base: nn.Module, shape: tuple[int, ...], batch: int, folder: Path) -> None:
        self.backend, self.shape, self.batch, self.folder, self.n = backend, shape, batch, folder, 0
        self.base = self.runner(base)

    def runner(self, model: nn.Module) -> Callable[[], object]:
        self.n += 1
        path = export_onnx(model.eval(), self.shape, self.folder / f"m{self.n}.onnx", self.batch)
        return self.backend.runner(path, self.batch)

    def speedup(self, model: nn.Module, rounds: int = 5, runs: int = 60) -> float:
        """`model`'s speed-up over the base, timed with the machine to itself (no slimsearch fine-tune or measurement
        of another process meanwhile)."""
        runner = self.runner(model)
        with MachineLock().measuring():
            return interleaved({"base": self.base, "x": runner}, "base", rounds=rounds, runs=runs)[1].speedup


def smallest_meeting(build: Callable[[float], nn.Module], grid: list[float], target: float, timer: Timer,
                     cheaper_up: bool) -> tuple[float, nn.Module, float] | None:
    """Bisect `grid` for the mildest setting whose network's measured speed-up reaches `target` (speed-up grows
    with the setting when `cheaper_up`, else falls): (setting, network, speed-up), None where none reaches it."""
    order = grid if cheaper_up else list(reversed(grid))  # from mildest to harshest
    lo, hi, found = 0, len(order) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        model = build(order[mid])
        s = timer.speedup(model)
        if s >= target:
            found, hi = (order[mid], model, s), mid - 1
        else:
            lo = mid + 1
    return found


def uniform_l1(space: object, keep: float, round_to: int) -> nn.Module:
    """The base pruned uniformly by L1 magnitude: every group keeps the share `keep`, widths rounded to `round_to`."""
    return compress(space.base, space.example_input, keep=keep, round_to=round_to)


def uniform_meeting(space: object, data: object, target: float,
                    timer: Timer) -> tuple[float, int, nn.Module, float] | None:
    """Uniform L1 pruning at its best rounding for a measured speed-up `target`: at round_to 4, 8 and 16 the mildest
    keep that reaches it, and of those the network with the most MACs: (keep, round_to, network, speed-up)."""
    best = None
    for rt in (4, 8, 16):
        hit = smallest_meeting(lambda k, rt=rt: uniform_l1(space, k, rt), KEEP_GRID, target, timer, cheaper_up=False)
        if hit and (best is None or measure_cost(hit[1], data.input_shape).macs >
                    measure_cost(best[2], data.input_shape).macs):
            best = (hit[0], rt, hit[1], hit[2])
    return best


def tp_meeting(space: object, data: object, target: float, timer: Timer) -> tuple[float, nn.Module, float] | None:
    """Torch-Pruning's global L1 pruning at the mildest `pruning_ratio` whose measured speed-up reaches `target`:
    (ratio, network, speed-up)."""
    return smallest_meeting(lambda r: tp_global_l1(space.base, data, r, None), TP_GRID, target, timer, cheaper_up=True)


def finetune_test(model: nn.Module, base: nn.Module, data: object, config: object, epochs: float,
                  seed: int = 0) -> dict[str, float]:
    """The same budget for every method: adaptive BN, `epochs` of the recipe's fine-tune distilled from the base;
    validation accuracy before and after, test accuracy after."""
    settings = train_settings(config)
    settings.epochs, settings.max_eval_samples = epochs, None
    torch.manual_seed(seed)
    with placed(settings.device, model):
        recalibrate_bn(model, data.train, config.train.bn_batches, settings.batch_size, seed)
        adaptive = evaluate(model, data.val)
    tune = FineTune(model, data, settings, seed=seed, teacher=base)
    tune.run_to(epochs)
    return {"val_adaptive_bn": adaptive, "val": tune.accuracy("val"), "test": evaluate(model, data.test),
            "finetune_s": round(tune.seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/cifar10_resnet56_cpu.yaml")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--trials", type=int, default=18, help="completed trials of the searched study")
    parser.add_argument("--study-epochs", type=float, default=0.2, help="the study's per-candidate fine-tune")
    parser.add_argument("--finetune-epochs", type=float, default=0.5, help="every chosen network's fine-tune")
    parser.add_argument("--check", type=int, default=30, help="the recipe's candidates for the predictor check")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", default="resnet56-ort", help="names the output files and the RESULTS section")
    args = parser.parse_args()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(args.recipe, [f"output_dir={tmp}", f"search.trials={args.trials}",
                                           f"train.epochs={args.study_epochs}", f"constraints.speedup={min(args.targets)}",
                                           f"search.fidelity={{rungs: [0, {args.study_epochs:g}], eta: 3}}",
                                           *args.overrides])
        ctx = build_context(config)
        space, table, backend, data = ctx.space, ctx.predictor.table, ctx.backend, ctx.data
        lat = config.latency
        print(f"table: {len(table.entries)} units, built in {table.protocol.get('seconds')} s", flush=True)
        report = check_study_table(config, space, table, backend, samples=args.check)
        print(f"predictor on {args.check} of the recipe's candidates: speed-up MAPE {report.mape:.2f}%, Spearman "
              f"{report.spearman:.3f}",
              flush=True)
        stairs = staircase(space, table)
        shown_groups = [space.groups[0].name, space.groups[len(space.groups) // 2].name, space.groups[-1].name]
        full = {g.name: g.channels for g in space.groups}
        measured = {}
        for g in shown_groups:
            points = []
            for w, _ in stairs[g]:
                keep = {**{k: 1.0 for k in full}, g: w / full[g]}
                net = compress(space.base, space.example_input, keep=keep, round_to=config.space.round_to)
                ms = backend.measure(net, data.input_shape, lat.precision, lat.batch_size).median_ms
                points.append((w, ms / ctx.predictor.reference_ms))  # in the table's reference units
            measured[g] = points
        png = plot_staircase(stairs, lower_edges(stairs), OUT / f"staircase-{args.tag}.png",
                             f"{config.space.base.model} on {table.backend} {table.device}, batch {table.batch_size}: "
                             "predicted (line), offered (dots), measured (x)", measured)

        timer = Timer(backend, space.base, data.input_shape, lat.batch_size, Path(tmp))
        chosen: dict[tuple[str, float], tuple[nn.Module, str]] = {}
        for target in args.targets:
            best = uniform_meeting(space, data, target, timer)
            if best:
                chosen[("uniform L1", target)] = (best[2], f"keep {best[0]:.2f}, round_to {best[1]}")
            hit = tp_meeting(space, data, target, timer)
            if hit:
                chosen[("Torch-Pruning global L1", target)] = (hit[1], f"pruning_ratio {hit[0]:.3f}")
            hit = smallest_meeting(
                lambda s: compress(space.base, space.example_input, keep={g: w / full[g] for g, w in
                                                                            space.greedy_policy(s)[0].items()},
                                   round_to=config.space.round_to),
                [round(1.05 + 0.05 * i, 2) for i in range(60)], target, timer, cheaper_up=True)
            if hit:
                chosen[("latency-aware greedy", target)] = (hit[1], f"predicted target {hit[0]:.2f}×")
            print(f"target {target}×: baselines chosen", flush=True)

        t_study = time.perf_counter()
        study = run_study(config, show_progress=False)
        study_s = time.perf_counter() - t_study
        trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        records = [(t, TrialRecord.of(t)) for t in trials]
        trained = [(t, r) for t, r in records if r.screened is None and r.is_feasible]
        screened = sum(1 for _, r in records if r.screened)
        print(f"study: {len(trials)} trials ({screened} screened) in {study_s:.0f} s", flush=True)
        remeasured = []
        for t, r in sorted(trained, key=lambda tr: -tr[1].accuracy)[:12]:
            net = space.build(r.candidate)
            remeasured.append((r.accuracy, timer.speedup(net), net, space.describe(r.candidate), t.number))
        for target in args.targets:
            meeting = [m for m in remeasured if m[1] >= target]
            if meeting:
                acc, s, net, text, number = max(meeting, key=lambda m: m[0])
                chosen[("searched", target)] = (net, f"trial {number}: {text.replace('|', '/')} (val {acc:.3f} in "
                                                          "the study)")

        rows, results = [], {}
        base_test = evaluate(space.base, data.test)
        runners = {"base": timer.base}
        for (method, target), (net, setting) in chosen.items():
            runners[f"{method} @ {target:g}×"] = timer.runner(net)
        timing = {c.name: c for c in interleaved(runners, "base", rounds=7, runs=80)}
        for (method, target), (net, setting) in chosen.items():
            name = f"{method} @ {target:g}×"
            cost = measure_cost(net, data.input_shape)
            scores = finetune_test(copy.deepcopy(net), space.base, data, config, args.finetune_epochs)
            c = timing[name]
            results[name] = {"setting": setting, "macs": cost.macs, "params": cost.params, **scores,
                             "speedup": c.speedup, "speedup_low": c.speedup_low, "speedup_high": c.speedup_high,
                             "median_ms": c.median_ms}
            rows.append({"target": f"{target:g}×", "method": method,
                         "measured speed-up": f"{c.speedup:.2f}× [{c.speedup_low:.2f}–{c.speedup_high:.2f}]",
                         "MACs": f"{cost.macs / 1e6:.1f}M", "test acc": f"{scores['test']:.4f}",
                         "Δ vs base": f"{100 * (scores['test'] - base_test):+.2f}", "setting": setting})
            print(rows[-1], flush=True)
    b = timing["base"]
    summary = {
        "base_test": base_test, "base_ms": b.median_ms, "table_units": len(table.entries),
        "table_build_s": table.protocol.get("seconds"), "predictor_mape": report.mape,
        "predictor_spearman": report.spearman, "check_policies": args.check, "study_trials": len(trials),
        "study_screened": screened, "study_s": study_s, "results": results, "wall_s": time.perf_counter() - t_start,
    }
    (OUT / f"hardware_aware-{args.tag}.json").write_text(json.dumps(summary, indent=1))
    body = (
        f"Base `{config.space.base.model}` from `{config.space.base.checkpoint}`: test {base_test:.4f}, "
        f"{b.median_ms:.3f} ms on {table.backend} {table.backend_version}, {table.device}, batch {lat.batch_size}.\n"
        f"Latency table: {len(table.entries)} conv/linear units and {table.model.networks} whole networks, built in "
        f"{table.protocol.get('seconds')} s; predictor on {args.check} of the recipe's candidates: "
        f"speed-up MAPE {report.mape:.2f}%, Spearman {report.spearman:.3f}. Staircase: `{shown(png)}`.\n"
        f"Searched: `{shown(args.recipe)}` with constraints.speedup {min(args.targets):g}, {len(trials)} trials "
        f"({screened} screened untrained by predicted speed-up), {args.study_epochs:g}-epoch fine-tune per trial, "
        f"{study_s:.0f} s. Every network below: adaptive BN, then {args.finetune_epochs:g} epoch distilled from the "
        f"base (batch {config.train.batch_size}, lr {config.train.lr:g}), test accuracy on the 10,000 test images. "
        "Speed-ups: all networks timed in one process interleaved with the base (7 rounds × 80 runs; median of "
        "per-round ratios [min–max]).\n\n" + markdown_table(rows)
    )
    write_section(f"hardware-aware-{args.tag}", f"Hardware-aware compression: {args.tag}", body)
    print(body)


if __name__ == "__main__":
    main()
