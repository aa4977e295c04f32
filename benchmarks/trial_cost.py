"""What does a trial cost, and how much of it is the framework's own overhead?

Runs a study and splits its wall time into the work of each trial (build, cost count, fine-tune,
export + latency) and the framework around it (sampler, storage writes, callbacks, progress),
from the timings each trial records and the trial timestamps Optuna stores. Also reports the
peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optuna.trial import TrialState  # noqa: E402

from benchmarks.results import markdown_table, shown, variant_name, write_section  # noqa: E402
from search.config import load_config  # noqa: E402
from search.executors.inprocess import run_study  # noqa: E402
from search.record import TrialRecord  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("build", "cost", "train", "latency")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/digits_blocks.yaml")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="8 trials")
    args = parser.parse_args()
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
