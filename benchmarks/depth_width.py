"""Depth and width at measured speed-ups: every method's network after the same long fine-tune.

On the depth recipe's base and engine (default: `studies/cifar10_resnet56_depth_cpu.yaml`, the shared ResNet-56 on
CIFAR-10, ONNX Runtime, 1 thread, batch 1):
1. the searched study: the recipe run here for `--trials` candidates (adaptive-BN screening, the best promoted), its
   screened and fine-tuned candidates per hour;
2. at each `--targets` speed-up (measured interleaved with the base): the width-only latency greedy and the
   depth + width greedy (their predicted targets bisected to the measured one) and the searched policy (the most
   accurate candidate of the study that is no anchor and whose measured speed-up reaches the target); at
   `--all-at` also uniform L1 at its best rounding and Torch-Pruning's global L1, latency-matched;
3. every network fine-tuned the same way through `slimsearch finetune`'s API (`--epochs`, cosine, distilled from
   the base, from the network as cut with BatchNorm recalibrated), test accuracy after each epoch, its speed-up
   timed again interleaved with the base; a table and one curve plot per target.

Resumable: the study is the run in WORK, the networks chosen are kept in WORK/networks.json, each fine-tune in its own
folder with its checkpoint, and each finished network's row in WORK/rows.json — run the same command again to go
on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.nn as nn  # noqa: E402
from optuna.trial import FixedTrial, TrialState  # noqa: E402

from benchmarks.finetune_curves import long_run_parser, queued_trial, test_curve  # noqa: E402
from benchmarks.hardware_aware import Timer, smallest_meeting, tp_meeting, uniform_l1, uniform_meeting  # noqa: E402
from benchmarks.realscale.baselines import tp_global_l1  # noqa: E402
from benchmarks.results import markdown_table, shown, write_section  # noqa: E402
from evaluators.cost import measure_cost  # noqa: E402
from evaluators.train import evaluate  # noqa: E402
from search.export.finetune import Interrupted, finetune, finetune_network  # noqa: E402
from search.export.finetune.curves import plot_curves  # noqa: E402
from search.recipe.config import StudyConfig, load_config  # noqa: E402
from search.results.record import TrialRecord  # noqa: E402
from search.study.executors.inprocess import run_study  # noqa: E402
from search.study.storage import create_or_load_study  # noqa: E402
from search.trial.build import build_context  # noqa: E402
from search.trial.context import StudyContext  # noqa: E402
from search.trial.suggest import OptunaSuggest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"
UNIFORM, TP, WIDTH, DEPTH, SEARCHED = ("uniform L1", "Torch-Pruning global L1", "width-only greedy",
                                       "depth + width greedy", "searched")


def greedy_grid(ctx: StudyContext) -> list[float]:
    """The predicted speed-ups bisected for a greedy network, in steps of 0.05 across the recipe's range."""
    low, high = ctx.config.space.greedy_speedup
    return [round(low + 0.05 * i, 2) for i in range(int((high - low) / 0.05) + 1)]


def greedy_candidate(ctx: StudyContext, speedup: float) -> dict[str, Any]:
    """The space's latency_greedy candidate at a predicted `speedup`, as a trial queued with it samples it."""
    return ctx.space.sample(OptunaSuggest(FixedTrial({"policy": "latency_greedy", "greedy.speedup": speedup})))


def searched(config: StudyConfig, ctx: StudyContext, target: float, timer: Timer) -> dict[str, Any] | None:
    """The most accurate completed trial of the study that is neither an anchor nor the greedy policy itself and whose
    speed-up, measured interleaved with the base, reaches `target` (tried from the most accurate down)."""
    study = create_or_load_study(config)
    records = [(t.number, TrialRecord.of(t)) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    ranked = sorted(((n, r) for n, r in records if not r.anchor and not r.screened and r.at_top and r.is_feasible
                     and r.candidate.get("policy") != "latency_greedy"  # the greedy itself is no search result
                     and (r.predicted_speedup or 0) >= target * 0.97), key=lambda nr: -nr[1].accuracy)
    for number, record in ranked[:8]:
        speedup = timer.speedup(ctx.space.build(record.candidate))
        if speedup >= target:
            return {"trial": number, "description": ctx.space.describe(record.candidate), "speedup": speedup,
                    "search_accuracy": record.accuracy}
    return None


def choose(config: StudyConfig, ctx: StudyContext, width: StudyContext, args: argparse.Namespace,
           timer: Timer) -> dict[str, dict[str, Any]]:
    """Every (method, target) network's setting and its speed-up at choice, keyed `method @ target×`."""
    chosen: dict[str, dict[str, Any]] = {}
    for target in args.targets:
        for method, space_ctx in ((WIDTH, width), (DEPTH, ctx)):
            hit = smallest_meeting(lambda s, c=space_ctx: c.space.build(greedy_candidate(c, s)), greedy_grid(space_ctx),
                                   target, timer, True)
            if hit:
                chosen[f"{method} @ {target:g}×"] = {"method": method, "target": target, "predicted_speedup": hit[0],
                                                      "speedup": hit[2]}
        found = searched(config, ctx, target, timer)
        if found:
            chosen[f"{SEARCHED} @ {target:g}×"] = {"method": SEARCHED, "target": target, **found}
        if target == args.all_at:
            uniform, tp = uniform_meeting(ctx.space, ctx.data, target, timer), tp_meeting(ctx.space, ctx.data, target, timer)
            if uniform:
                chosen[f"{UNIFORM} @ {target:g}×"] = {"method": UNIFORM, "target": target, "keep": uniform[0],
                                                       "round_to": uniform[1], "speedup": uniform[3]}
            if tp:
                chosen[f"{TP} @ {target:g}×"] = {"method": TP, "target": target, "pruning_ratio": tp[0],
                                                  "speedup": tp[2]}
        print(f"target {target:g}×: {', '.join(k for k in chosen if k.endswith(f'@ {target:g}×'))}", flush=True)
    return chosen


def fine_tuned(config: StudyConfig, ctx: StudyContext, width: StudyContext, key: str, pick: dict[str, Any],
               out: Path, epochs: float) -> dict[str, Any]:
    """The card of `pick`'s network after the fine-tune (through the run's trial where it is one)."""
    method = pick["method"]
    if method == DEPTH:
        trial = queued_trial(config, greedy_candidate(ctx, pick["predicted_speedup"]),
                         {"policy": "latency_greedy", "greedy.speedup": pick["predicted_speedup"]})
        return finetune(config.run_dir, trial, epochs, out=out, start="built", progress=False)
    if method == SEARCHED:
        return finetune(config.run_dir, pick["trial"], epochs, out=out, start="built", progress=False)
    network: nn.Module
    if method == WIDTH:
        network = width.space.build(greedy_candidate(width, pick["predicted_speedup"]))
    elif method == UNIFORM:
        network = uniform_l1(ctx.space, pick["keep"], int(pick["round_to"]))
    else:
        network = tp_global_l1(ctx.space.base, ctx.data, pick["pruning_ratio"], None)
    return finetune_network(config.run_dir, network, key, epochs, out=out, progress=False)


def row(key: str, pick: dict[str, Any], card: dict[str, Any], out: Path, base_test: float) -> dict[str, str]:
    """One network's line of the table."""
    acc, vs = card["accuracy"], card["versus_base"]
    setting = {k: v for k, v in pick.items() if k not in ("method", "target", "speedup", "search_accuracy")}
    dropped = (card.get("candidate") or {}).get("drop") or []
    epochs, tests = test_curve(out)
    return {"target": f"{pick['target']:g}×", "method": pick["method"],
            "setting": ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting.items()),
            "blocks dropped": str(len(dropped)), "speed-up at choice": f"{pick['speedup']:.2f}×",
            "speed-up after": f"{vs['speedup']:.2f}× [{vs['speedup_low']:.2f}–{vs['speedup_high']:.2f}]",
            "MACs": f"{card['cost']['macs'] / 1e6:.1f}M", "params": f"{card['cost']['params'] / 1e3:.0f}k",
            "test before": f"{acc['test_before']:.4f}", "test after": f"{acc['test']:.4f}",
            "Δ test vs base": f"{100 * (acc['test'] - base_test):+.2f}",
            "best epoch": f"{epochs[tests.index(max(tests))]:g} of {epochs[-1]:g}",
            "s": f"{card['fine_tune']['seconds']:.0f}"}


def main() -> None:
    """Run the study, choose the networks, fine-tune each, write the table and curves."""
    parser = long_run_parser(__doc__, ROOT / "studies/cifar10_resnet56_depth_cpu.yaml", 5.0, "8 trials, 0.02 epoch")
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 1.5, 3.0])
    parser.add_argument("--all-at", type=float, default=2.0, help="the target where uniform and Torch-Pruning run too")
    parser.add_argument("--trials", type=int, help="candidates of the searched study (default: the recipe's)")
    args = parser.parse_args()
    epochs, trials = (0.02, 8) if args.quick else (args.epochs, args.trials)
    tag = args.tag or re.sub(r"[^A-Za-z0-9_.]+", "-", f"{args.recipe.stem}-{epochs:g}ep{'-quick' if args.quick else ''}")
    work = (args.work or ROOT / "runs" / f"depth_width-{tag}").resolve()
    config = load_config(args.recipe, [f"output_dir={work}", f"name={tag[:60]}", *args.overrides])
    ctx = build_context(config)
    width = build_context(load_config(args.recipe, [f"output_dir={work}", f"name={tag[:54]}-width", "space.drop=null",
                                                    *args.overrides]))
    t0 = time.perf_counter()
    study = run_study(config, trials=trials, show_progress=False)
    done = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    hours = max(sum(r.seconds.get("total", 0.0) for r in done) / 3600, 1e-9)
    tuned = [r for r in done if not r.screened and r.at_top]
    rate = (f"{len(done) - len(tuned)} candidates screened (by the table or by adaptive BN alone) and {len(tuned)} "
            f"fine-tuned in {hours * 60:.0f} min of trial time: {(len(done) - len(tuned)) / hours:.0f} screened and "
            f"{len(tuned) / hours:.0f} fine-tuned per hour (this session: {time.perf_counter() - t0:.0f} s)")
    print(rate, flush=True)
    chosen_file, rows_file = work / "networks.json", work / "rows.json"
    if chosen_file.is_file():
        chosen = json.loads(chosen_file.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            timer = Timer(ctx.backend, ctx.space.base, ctx.data.input_shape, config.latency.batch_size, Path(tmp))
            chosen = choose(config, ctx, width, args, timer)
        chosen_file.write_text(json.dumps(chosen, indent=1))
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    base_test = evaluate(ctx.space.base, ctx.data.test)
    outs = {key: work / re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-").lower() for key in chosen}
    try:
        for key, pick in chosen.items():
            if key not in rows:
                card = fine_tuned(config, ctx, width, key, pick, outs[key], epochs)
                rows[key] = row(key, pick, card, outs[key], base_test)
                rows_file.write_text(json.dumps(rows, indent=1))
                print(rows[key], flush=True)
    except Interrupted as exc:
        raise SystemExit(f"{exc} (this benchmark continues with the same command)") from None
    pngs = []
    for target in args.targets:
        curves = {chosen[k]["method"]: test_curve(outs[k]) for k in chosen if chosen[k]["target"] == target}
        pngs.append(plot_curves(OUT / f"depth_width-{tag}-{target:g}x.png", f"{config.space.base.model.split(':')[-1]} "
                                f"at {target:g}× measured: test accuracy per epoch", curves))
    base_macs = measure_cost(ctx.space.base, ctx.data.input_shape).macs
    body = (f"Base `{config.space.base.model}` from `{config.space.base.checkpoint}`: test {base_test:.4f}, "
            f"{base_macs / 1e6:.1f}M MACs. Searched study (`{shown(work)}`): {rate}. Every network: BatchNorm "
            f"recalibrated, then {epochs:g} epochs through `slimsearch finetune`'s API (cosine, distilled from the base), "
            "test accuracy on the whole test split; speed-ups over the base timed interleaved with it on "
            f"{ctx.backend.name}, batch {config.latency.batch_size}, at the choice and again after the fine-tune. "
            "Curves: " + ", ".join(f"`{shown(p)}`" for p in pngs) + ".\n\n" + markdown_table(list(rows.values())))
    write_section(f"depth-width-{tag}", f"Depth and width at measured speed-ups: {tag}", body)
    print(body)


if __name__ == "__main__":
    main()
