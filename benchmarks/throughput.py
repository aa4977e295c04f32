"""Trials per hour with one and two workers: the local executor, and Ray Tune with two trials at once.

Runs the default digits study (shortened to a few trials) once per executor setting, each in a fresh
study, and reports completed trials per hour of wall time, the speed-up over one worker, and how long
trials waited on the per-machine latency lock (a measurement runs alone on the machine, so parallel
fine-tunes wait for it and it waits for them). Ray is started before its clock starts and its start-up
time is reported apart, since a cluster is usually already running.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from benchmarks.results import markdown_table, shown, write_section  # noqa: E402
from search.recipe.config import StudyConfig, load_config  # noqa: E402
from search.results.record import TrialRecord  # noqa: E402
from search.study.executors.inprocess import run_study  # noqa: E402
from search.study.executors.local import run_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, workers: int, threads: int, run: Callable[[], optuna.Study]) -> dict[str, object]:
    """Run one setting and summarize its completed trials."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    study = run()
    wall = time.perf_counter() - start
    done = study.get_trials(states=(TrialState.COMPLETE,))
    seconds = [TrialRecord.of(t).seconds for t in done]
    return {
        "executor": name,
        "workers": workers,
        "torch threads/trial": threads,
        "trials": len(done),
        "wall s": f"{wall:.1f}",
        "trials/hour": round(len(done) / wall * 3600),
        "fine-tune s/trial": f"{statistics.fmean(s['train'] for s in seconds):.2f}",
        "lock wait s/trial": f"{statistics.fmean(s['train_wait'] + s['latency_wait'] for s in seconds):.2f}",
        "median latency ms": f"{statistics.median(t.values[1] for t in done):.4f}",
        "load avg before/after": f"{load_before:.1f} / {os.getloadavg()[0]:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=ROOT / "studies/digits_blocks.yaml")
    parser.add_argument("--trials", type=int, default=12, help="completed trials per setting")
    parser.add_argument("--quick", action="store_true", help="6 trials per setting")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray setting")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    trials = 6 if args.quick else args.trials
    rows = []
    with tempfile.TemporaryDirectory() as tmp:

        def config(tag: str, *more: str) -> StudyConfig:
            return load_config(args.recipe, [*args.overrides, *more, f"output_dir={tmp}", f"name=throughput-{tag}"])

        def threads(cfg: StudyConfig, workers: int) -> int:
            return cfg.train.threads or max(1, (os.cpu_count() or 1) // workers)

        one, one_thread, two = config("w1"), config("w1t1", "train.threads=1"), config("w2")
        rows.append(measure("local", 1, threads(one, 1), lambda: run_study(one, trials=trials, show_progress=False)))
        rows.append(measure("local", 1, 1, lambda: run_study(one_thread, trials=trials, show_progress=False)))
        rows.append(measure("local", 2, threads(two, 2), lambda: run_workers(
            two, 2, trials=trials, show_progress=False)))
        ray_note = ""
        if not args.no_ray:
            import ray

            from search.study.executors.ray_executor import run_ray

            t = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            ray_note = f" Starting the local Ray took {time.perf_counter() - t:.1f} s (not counted)."
            try:
                on_ray = config("ray2")
                rows.append(measure("ray", 2, on_ray.train.threads or 1, lambda: run_ray(
                    on_ray, trials=trials, show_progress=False, max_concurrent=2)))
            finally:
                ray.shutdown()
    base = rows[0]["trials/hour"]
    for row in rows:
        row["speed-up"] = f"{row['trials/hour'] / base:.2f}x"
    table = markdown_table(rows)
    summary = (
        f"{trials} completed trials per setting of `{shown(args.recipe)}`, each setting a fresh "
        "study, run one after the other in the order shown. Wall time includes worker start-up (spawned "
        f"processes load the data and the backend).{ray_note} `lock wait` is the time a trial waited for the "
        "per-machine latency lock (before its fine-tune and before its measurement). With `train.threads: 0` each fine-tune gets the "
        "machine's cores divided by the workers (a Ray trial: its CPUs); the second row, one worker with "
        "`--set train.threads=1`, tells the effect of more workers from that of fewer threads per fine-tune."
    )
    start = float(str(rows[0]["load avg before/after"]).split(" / ")[0])
    if start > 0.5 * (os.cpu_count() or 1):
        summary += (
            f" The 1-minute load average was already {start:.1f} on {os.cpu_count()} cores when the first setting "
            "started (it counts whatever ran in the minute before): other work on the machine competes with the "
            "timed settings, most with those that run more threads, and these numbers are not what an idle "
            "machine gives."
        )
    print(table)
    print(summary)
    write_section("throughput", "Throughput: trials per hour with parallel workers", summary + "\n\n" + table)


if __name__ == "__main__":
    main()
