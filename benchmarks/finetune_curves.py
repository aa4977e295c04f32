"""Long fine-tunes at one measured speed-up: accuracy per epoch of three pruned networks on the same schedule.

On the recipe's base and engine (default: the shared ResNet-56 on CIFAR-10, ONNX Runtime, 1 thread, batch 1):
1. the latency-aware greedy network whose speed-up over the base, measured interleaved with it, first reaches
   --target (its predicted target bisected), uniform L1 pruning at its best rounding and Torch-Pruning's global L1
   pruning matched the same way (benchmarks/hardware_aware.py chooses them);
2. the greedy network made a trial of a run of the recipe (queued, scored with a token fine-tune) and fine-tuned
   through `slimsearch finetune`'s API (`search.export.finetune.finetune`, `--start built`), the two baselines through
   `finetune_network` — each from the network as cut, BatchNorm recalibrated, --epochs distilled from the base on the
   cosine schedule, test accuracy after every epoch;
3. the test accuracy per epoch of the three drawn as curves (PNG) and tabled in RESULTS.md, with each network's
   speed-up timed again interleaved with the base after its fine-tune.

Resumable: the networks chosen are kept in WORK/networks.json (rebuilt from it, not chosen again), each fine-tune in
WORK/<method>/ with its checkpoint; run the same command again to continue where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.nn as nn  # noqa: E402
from optuna.trial import FixedTrial, TrialState  # noqa: E402

from benchmarks.hardware_aware import Timer, smallest_meeting, tp_meeting, uniform_l1, uniform_meeting  # noqa: E402
from benchmarks.realscale.baselines import tp_global_l1  # noqa: E402
from benchmarks.results import markdown_table, shown, write_section  # noqa: E402
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
GREEDY, UNIFORM, TP = "latency-aware greedy", "uniform L1", "Torch-Pruning global L1"
STUDY_EPOCHS = 0.01  # the greedy trial's own fine-tune: it only has to exist; its network is fine-tuned from as cut


def greedy_candidate(ctx: StudyContext, speedup: float) -> dict[str, Any]:
    """The recipe's latency_greedy candidate at a predicted `speedup`, as a trial queued with it samples it."""
    return ctx.space.sample(OptunaSuggest(FixedTrial({"policy": "latency_greedy", "greedy.speedup": speedup})))


def choose(ctx: StudyContext, target: float, timer: Timer) -> dict[str, dict[str, float]]:
    """Each method's mildest setting whose network reaches the measured speed-up `target`."""
    low, high = ctx.config.space.greedy_speedup
    grid = [round(low + 0.05 * i, 2) for i in range(int((high - low) / 0.05) + 1)]
    greedy = smallest_meeting(lambda s: ctx.space.build(greedy_candidate(ctx, s)), grid, target, timer, True)
    uniform = uniform_meeting(ctx.space, ctx.data, target, timer)
    tp = tp_meeting(ctx.space, ctx.data, target, timer)
    missing = [m for m, hit in ((GREEDY, greedy), (UNIFORM, uniform), (TP, tp)) if hit is None]
    if missing:
        raise SystemExit(f"no {', '.join(missing)} network reaches {target:g}× here")
    return {GREEDY: {"predicted_speedup": greedy[0], "speedup": greedy[2]},
            UNIFORM: {"keep": uniform[0], "round_to": uniform[1], "speedup": uniform[3]},
            TP: {"pruning_ratio": tp[0], "speedup": tp[2]}}


def network(ctx: StudyContext, method: str, setting: dict[str, float]) -> nn.Module:
    """A baseline's network rebuilt from its chosen setting."""
    if method == UNIFORM:
        return uniform_l1(ctx.space, setting["keep"], int(setting["round_to"]))
    return tp_global_l1(ctx.space.base, ctx.data, setting["pruning_ratio"], None)


def long_run_parser(doc: str, recipe: Path, epochs: float, quick: str) -> argparse.ArgumentParser:
    """The options every long fine-tune benchmark takes: the recipe, the epochs, a smoke mode, where its work is
    kept, recipe overrides and the tag that names its files."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=recipe)
    parser.add_argument("--epochs", type=float, default=epochs, help="every network's fine-tune")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {quick}, its own section")
    parser.add_argument("--work", type=Path, help="where the run and the fine-tunes are kept (default: runs/TAG)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", help="names the work folder, the figures and the RESULTS section")
    return parser


def queued_trial(config: StudyConfig, candidate: dict[str, Any], params: dict[str, Any] | None) -> int:
    """The number of the run's completed trial of `candidate`, queued with `params` and run once where missing."""
    def found() -> int | None:
        study = create_or_load_study(config)
        hits = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if TrialRecord.of(t).candidate == candidate]
        return hits[0] if hits else None

    if found() is None and params is not None:
        create_or_load_study(config).enqueue_trial(params)
        while found() is None:  # queued trials run oldest first: an earlier sitting's may go before this one
            study = create_or_load_study(config)
            if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                break
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            run_study(config, trials=done + 1, show_progress=False)  # `trials` counts every completed one
    number = found()
    if number is None:
        raise SystemExit(f"the run in {config.run_dir} has no completed trial of {candidate}; see `slimsearch status`")
    return number


def greedy_trial(config: StudyConfig, ctx: StudyContext, speedup: float) -> int:
    """The number of the run's trial of the greedy candidate at `speedup`, queued and run once."""
    return queued_trial(config, greedy_candidate(ctx, speedup), {"policy": "latency_greedy", "greedy.speedup": speedup})


def setting_text(setting: dict[str, float]) -> str:
    """A chosen setting in words, e.g. `keep 0.35, round_to 16` (its speed-up at choice left out)."""
    return ", ".join(f"{k} {v:g}" for k, v in setting.items() if k != "speedup")


def test_curve(out: Path) -> tuple[list[float], list[float]]:
    """Epochs and test accuracy from a fine-tune's finetune.csv."""
    with (out / "finetune.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [float(r["epoch"]) for r in rows], [float(r["test"]) for r in rows]


def main() -> None:
    """Choose the three networks (or read them back), fine-tune each, draw the curves and write the section."""
    parser = long_run_parser(__doc__, ROOT / "studies/cifar10_resnet56_cpu.yaml", 10.0, "0.02 epoch")
    parser.add_argument("--target", type=float, default=2.0, help="measured speed-up over the base")
    args = parser.parse_args()
    epochs = 0.02 if args.quick else args.epochs
    tag = args.tag or re.sub(r"[^A-Za-z0-9_.]+", "-", f"{args.recipe.stem}-{args.target:g}x-{epochs:g}ep"
                                                       f"{'-quick' if args.quick else ''}")
    work = (args.work or ROOT / "runs" / f"finetune_curves-{tag}").resolve()
    config = load_config(args.recipe, [f"output_dir={work}", f"name={tag[:60]}", "search.anchors=0",
                                       "search.fidelity=null", "constraints.speedup=null",
                                       f"train.epochs={STUDY_EPOCHS}", *args.overrides])
    ctx = build_context(config)
    chosen_file = work / "networks.json"
    if chosen_file.is_file():
        chosen = json.loads(chosen_file.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            timer = Timer(ctx.backend, ctx.space.base, ctx.data.input_shape, config.latency.batch_size, Path(tmp))
            chosen = choose(ctx, args.target, timer)
        work.mkdir(parents=True, exist_ok=True)
        chosen_file.write_text(json.dumps(chosen, indent=1))
    print(f"networks at {args.target:g}×: {json.dumps(chosen)}", flush=True)
    trial = greedy_trial(config, ctx, chosen[GREEDY]["predicted_speedup"])
    cards, outs = {}, {m: work / re.sub(r"[^A-Za-z0-9]+", "-", m).strip("-").lower() for m in (GREEDY, UNIFORM, TP)}
    try:
        for method, out in outs.items():
            if method == GREEDY:
                cards[method] = finetune(config.run_dir, trial, epochs, out=out, start="built", progress=False)
            else:
                name = f"{method} ({setting_text(chosen[method])})"
                cards[method] = finetune_network(config.run_dir, network(ctx, method, chosen[method]), name, epochs,
                                                 out=out, progress=False)
    except Interrupted as exc:
        raise SystemExit(f"{exc} (this benchmark continues with the same command)") from None
    curves = {m: test_curve(out) for m, out in outs.items()}
    title = (f"{config.space.base.model.split(':')[-1]}, {args.target:g}× measured ({ctx.backend.name}, batch "
             f"{config.latency.batch_size}): test accuracy per epoch")
    png = plot_curves(OUT / f"finetune_curves-{tag}.png", title, curves)
    base, base_test = cards[GREEDY]["versus_base"]["base"], evaluate(ctx.space.base, ctx.data.test)
    rows = []
    for method, card in cards.items():
        ft, acc, vs = card["fine_tune"], card["accuracy"], card["versus_base"]
        rows.append({"method": method, "setting": setting_text(chosen[method]), "speed-up at choice": f"{chosen[method]['speedup']:.2f}×",
                     "speed-up after": f"{vs['speedup']:.2f}× [{vs['speedup_low']:.2f}–{vs['speedup_high']:.2f}]",
                     "MACs": f"{card['cost']['macs'] / 1e6:.1f}M", "test before": f"{acc['test_before']:.4f}",
                     **{f"test @ {e:g}": f"{a:.4f}" for e, a in zip(*curves[method]) if e > 0},
                     "Δ test vs base": f"{100 * (acc['test'] - base_test):+.2f}", "s": f"{ft['seconds']:.0f}"})
        print(rows[-1], flush=True)
    ft = cards[GREEDY]["fine_tune"]
    body = (
        f"Base `{config.space.base.model}` from `{config.space.base.checkpoint}` (test {base_test:.4f}, validation "
        f"{base['accuracy']:.4f}, "
        f"{base['latency_ms']:.3f} ms in the study). Networks chosen at a measured {args.target:g}× (interleaved with "
        f"the base, 5 rounds × 60 runs, mildest setting that reaches it); the greedy one is trial #{trial} of the run "
        f"in `{shown(work)}` and was fine-tuned through `search.export.finetune.finetune` (`--start built`), the "
        f"others through `finetune_network`. Every network: adaptive BN, then {epochs:g} epochs on "
        f"{ft['images_per_epoch']} images, {ft['schedule']} from lr {ft['lr']:g} (warm-up {ft['warmup_epochs']:g} "
        f"epoch), batch {ft['batch_size']}, {ft['distillation']}; test accuracy on {cards[GREEDY]['accuracy']['test_images']} "
        f"images after each epoch, speed-up timed again after the fine-tune. Devices: {', '.join(ft['devices'])}. "
        f"Curves: `{shown(png)}`.\n\n" + markdown_table(rows)
    )
    write_section(f"finetune-curves-{tag}", f"Long fine-tunes at {args.target:g}×: {tag}", body)
    print(body)


if __name__ == "__main__":
    main()
