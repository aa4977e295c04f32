"""What does a trial cost, and how much of it is the framework's own overhead?

Runs a study and splits its wall time into the work of each trial (build, cost count, fine-tune,
export + latency) and the framework around it (sampler, storage writes, callbacks, progress),
from the timings each trial records and the trial timestamps Optuna stores. Also reports the
peak resident memory of the process.

`--parts N` (a compression recipe with a latency table, e.g. studies/cifar10_resnet56_cpu.yaml) times instead each
part of a candidate's evaluation on N candidates spanning 1.2×–3× predicted speed-up — build, cost count, table
prediction, adaptive BN, evaluation, the fine-tune, ONNX export, engine session and timing, the interleaved
comparison with the base — and what a screened and a fine-tuned candidate cost, so the fixed cost is visible.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from benchmarks.proxy_quality import spanning  # noqa: E402
from benchmarks.results import markdown_table, shown, variant_name, write_section  # noqa: E402
from evaluators.cost import measure_cost  # noqa: E402
from evaluators.onnx_model import ExportedModel  # noqa: E402
from evaluators.train import evaluate, recalibrate_bn  # noqa: E402
from search.recipe.config import load_config  # noqa: E402
from search.results.record import TrialRecord  # noqa: E402
from search.study.executors.inprocess import run_study  # noqa: E402
from search.trial.build import build_context  # noqa: E402
from search.trial.context import StudyContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("build", "cost", "train", "latency")


SCREEN = ("build", "cost count", "table prediction", "adaptive BN", "evaluation")
ENGINE = ("ONNX export", "engine session", "engine timed runs", "engine warm-up, rounds, interleaved vs base")
FINE_TUNE = ("fine-tune", "evaluation after", *ENGINE)


def part_times(ctx: StudyContext, n: int, folder: Path) -> dict[str, list[float]]:
    """Seconds of each part of evaluating `n` candidates spanning 1.2×–3× predicted speed-up, one by one."""
    from search.trial.scoring import scoring_for

    scoring, settings = scoring_for(ctx), ctx.config.train
    times: dict[str, list[float]] = {p: [] for p in (*SCREEN, *FINE_TUNE)}

    def timed(part: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        times[part].append(time.perf_counter() - t)
        return out

    study = optuna.create_study(directions=["maximize", "minimize"])
    scoring.attach(study)
    for i, candidate in enumerate(spanning(ctx, n, 1.2, 3.0, pool=200)):
        model = timed("build", ctx.space.build, candidate)
        timed("cost count", measure_cost, model, ctx.data.input_shape)
        timed("table prediction", lambda: ctx.predictor.predict(candidate))
        timed("adaptive BN", recalibrate_bn, model, ctx.data.train, settings.bn_batches, settings.batch_size, i)
        timed("evaluation", evaluate, model, scoring.validation())
        tune = scoring.fine_tune(model, i, candidate=candidate)
        timed("fine-tune", tune.run_to, settings.epochs)
        timed("evaluation after", evaluate, model, scoring.validation())
        exported = timed("ONNX export", ExportedModel, model, ctx.data.input_shape, folder / str(i))
        t = time.perf_counter()
        stats = scoring.latency(exported, candidate)
        whole = time.perf_counter() - t
        measured = stats.build_seconds + stats.runs * stats.mean_ms / 1e3
        times["engine session"].append(stats.build_seconds)
        times["engine timed runs"].append(measured - stats.build_seconds)
        times["engine warm-up, rounds, interleaved vs base"].append(whole - measured)
        print(f"candidate {i}: " + " ".join(f"{p}={v[-1]:.2f}s" for p, v in times.items()), flush=True)
    return times


def parts_report(args: argparse.Namespace) -> None:
    """`--parts`: the per-part breakdown of a candidate's cost, written as its own RESULTS.md section."""
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(args.recipe, [*args.overrides, f"output_dir={tmp}"])
        ctx = build_context(config)
        times = part_times(ctx, args.parts, Path(tmp))
    med = {p: statistics.median(v) for p, v in times.items()}
    screen = sum(med[p] for p in SCREEN)
    before = screen - med["table prediction"] + sum(med[p] for p in ENGINE)
    tuned = screen + sum(med[p] for p in FINE_TUNE)
    rows = [{"part": p, "median s": f"{med[p]:.3f}", "min–max s": f"{min(times[p]):.3f}–{max(times[p]):.3f}",
             "in": "screen" if p in SCREEN else "fine-tuned candidate"} for p in (*SCREEN, *FINE_TUNE)]
    table = markdown_table(rows)
    summary = (f"{args.parts} candidates of `{shown(args.recipe)}` spanning 1.2×–3× predicted speed-up, fine-tuned "
               f"{config.train.epochs:g} epoch on {config.train.resolved_device()} ({torch.get_num_threads()} threads), "
               f"timed on {ctx.backend.name} {ctx.backend.version()} ({ctx.backend.device()}). A candidate screened "
               f"by adaptive BN with its latency predicted by the table: **{screen:.1f} s, {3600 / screen:.0f} per "
               f"hour** (with the engine timing it at rung 0 instead, as before — the same measured parts plus export, "
               f"session and timing: {before:.1f} s, "
               f"{3600 / before:.0f} per hour). A fine-tuned candidate (screen, fine-tune, evaluation, export, "
               f"engine): **{tuned:.1f} s, {3600 / tuned:.0f} per hour**.")
    print(table)
    print(summary)
    write_section(f"trial-parts-{variant_name(args.recipe, args.overrides)}",
                  f"Cost of a candidate, part by part: {args.recipe.stem}", summary + "\n\n" + table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/digits_blocks.yaml")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="8 trials")
    parser.add_argument("--parts", type=int, default=0, metavar="N",
                        help="time each part of a candidate's evaluation on N candidates instead of running a study")
    args = parser.parse_args()
    if args.parts:
        parts_report(args)
        return
    if args.quick:
        args.trials = 8
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(args.recipe, [*args.overrides, f"output_dir={tmp}", f"search.trials={args.trials}"])
        t0 = time.perf_counter()
        study = run_study(config, show_progress=False)
        wall = time.perf_counter() - t0
        trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.datetime_start)
        first_start, last_end = trials[0].datetime_start, trials[-1].datetime_complete
        loop = (last_end - first_start).total_seconds()
        setup = wall - loop
        sums = {p: sum(TrialRecord.of(t).seconds[p] for t in trials) for p in PARTS}
        work = sum(sums.values())
        framework = loop - work
    n = len(trials)
    rows = [{"part": p, "s per trial": f"{sums[p] / n:.3f}", "share of loop": f"{sums[p] / loop:.1%}"} for p in PARTS]
    rows.append({"part": "framework (sampler, storage, callbacks)", "s per trial": f"{framework / n:.3f}",
                 "share of loop": f"{framework / loop:.1%}"})
    rows.append({"part": "trial loop total", "s per trial": f"{loop / n:.3f}", "share of loop": "100%"})
    per_trial_total = [TrialRecord.of(t).seconds["total"] for t in trials]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend = TrialRecord.of(trials[0]).latency["backend"]
    summary = (f"{n} completed trials of `{shown(args.recipe)}`, fine-tuned on {config.train.resolved_device()}, "
               f"latency on {backend}; one-off setup (data, backend, study) "
               f"{setup:.1f} s; trial time median {statistics.median(per_trial_total):.2f} s; "
               f"framework overhead {framework / loop:.1%} of the trial loop; peak RSS {peak_mib:.0f} MiB.")
    table = markdown_table(rows)
    print(table)
    print(summary)
    latency_note = {"torch": "`latency` includes the warm-up (on a GPU, the CUDA graph capture too). ",
                    "onnxruntime": "`latency` includes the ONNX export and the engine session build. ",
                    "tensorrt": "`latency` includes the ONNX export and the engine build. "}.get(backend, "")
    default = args.recipe.resolve() == (ROOT / "studies/digits_blocks.yaml").resolve() and not args.overrides
    key = "trial-cost" if default else f"trial-cost-{variant_name(args.recipe, args.overrides)}"
    variant = " ".join([args.recipe.stem, *args.overrides])
    title = "Cost of a trial and framework overhead" + ("" if default else f": {variant}")
    write_section(key, title, latency_note + summary + "\n\n" + table)


if __name__ == "__main__":
    main()
