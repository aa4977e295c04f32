"""How trials are executed: one process, several local worker processes, or Ray Tune trials, each an `Executor`
registered by name in `EXECUTORS` (`slimsearch run --executor NAME`). Every executor writes to the same Optuna
storage, so `status`, `pareto` and `export` read a study the same way whichever executor ran it. Ray is imported
only when the Ray executor runs.
"""

from __future__ import annotations

import optuna

from search.recipe.config import StudyConfig
from search.study.executors import local  # noqa: F401  (registers "local")
from search.study.executors.base import EXECUTORS, Executor, ExecutorOptions


@EXECUTORS.register("ray")
def run_ray_trials(config: StudyConfig, trials: int | None, timeout: float | None, show_progress: bool,
                   options: ExecutorOptions) -> optuna.Study:
    """Ray Tune trials on a local Ray or the cluster at `options.address` (Ray imported here, when it runs)."""
    from search.study.executors.ray_executor import run_ray

    return run_ray(config, trials=trials, timeout=timeout, show_progress=show_progress, address=options.address,
                   cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial,
                   max_concurrent=options.max_concurrent)


__all__ = ["EXECUTORS", "Executor", "ExecutorOptions"]
