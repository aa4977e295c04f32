"""Run a study in this process until it has its requested number of completed trials (the local executor's
loop; `--workers N` runs N of them)."""

from __future__ import annotations

import logging
import os
import time

import optuna
import torch

from search.recipe.config import StudyConfig
from search.results.artifacts import PruneArtifacts, artifact_store
from search.study.after_trial import AfterTrial, FailureCap, StopAtBudget
from search.study.executors.base import time_left
from search.study.progress import StudyProgress
from search.study.recovery import recover_stale_trials
from search.study.storage import check_backend, completed, create_or_load_study, enqueue_anchors, frozen_recipe
from search.trial.build import build_context, make_objective
from search.trial.locks import record_protocol


def run_study(
    config: StudyConfig, trials: int | None = None, timeout: float | None = None, show_progress: bool = True,
    max_consecutive_failures: int | None = None, workers: int = 1, recover: bool = True,
) -> optuna.Study:
    """Create or resume the study and run trials until `trials` have completed (or `timeout` passes, counted from
    the call: preparing the study counts).
    `workers` says how many such processes share this machine: they split its cores for training.
    `recover=False` skips the start-up recovery of dead workers' trials (a parent process already did it)."""
    begun = time.monotonic()
    target = trials or config.search.trials
    timeout = timeout or config.search.timeout
    optuna.logging.set_verbosity(logging.WARNING)
    torch.set_num_threads(config.train.threads or max(1, (os.cpu_count() or 1) // workers))
    with frozen_recipe(config):
        ctx = build_context(config)
        study = create_or_load_study(config)
        check_backend(study, ctx.backend, config.latency.precision)
        objective = make_objective(ctx)
    if recover:
        recover_stale_trials(study)
    enqueue_anchors(study, ctx.space, config, target)
    record_protocol(study, "local", workers)
    cap = FailureCap(max_consecutive_failures or config.search.max_consecutive_failures)
    listeners = (StopAtBudget(target), cap, PruneArtifacts(artifact_store(config.run_dir)))
    done = completed(study)
    left = time_left(timeout, begun) if done < target else None
    if done < target and (left is None or left > 0):
        with StudyProgress(target, done, ctx.space.describe, bar=show_progress) as progress:
            study.optimize(objective, timeout=left, catch=(Exception,), callbacks=[AfterTrial(*listeners, progress)])
    if cap.tripped:
        raise cap.failures.error(cap.last_error)
    return study
