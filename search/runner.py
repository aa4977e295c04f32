"""Run a study to its requested number of completed trials, one process (the local executor)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from evaluators.data import DataBundle, load_data
from evaluators.latency import LatencyBackend, get_backend
from search.config import StudyConfig
from search.errors import UsageError
from search.objective import Objective
from search.progress import StudyProgress
from search.study import create_or_load_study, freeze_config
from spaces import Space, get_space


@dataclass
class StudyContext:
    """Everything a trial needs that is built once per process."""

    config: StudyConfig
    data: DataBundle
    space: Space
    backend: LatencyBackend


def build_context(config: StudyConfig) -> StudyContext:
    """Load the data, instantiate the space for it, and open the latency backend."""
    data = load_data(
        config.data.dataset, config.data.root, config.data.image_size, config.data.val_fraction, config.seed
    )
    space = get_space(config.space.type)(
        config.space, in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size
    )
    lat = config.latency
    options: dict[str, object] = {}
    if lat.backend in ("auto", "onnxruntime"):
        options = {"threads": lat.threads, "max_seconds": lat.max_seconds, "target_cv": lat.target_cv}
    backend = get_backend(lat.backend, **options)
    return StudyContext(config, data, space, backend)


def describe(space: Space):
    """The space's one-line candidate summary, if it offers one."""
    return getattr(space, "describe", None)


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


class FailureCap:
    """Stop the study after `limit` failed trials in a row, which means the recipe is wrong."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= self.limit:
            self.tripped = True
            study.stop()


def check_backend(study: optuna.Study, backend: LatencyBackend, precision: str) -> None:
    """Refuse to mix latencies from different backends, devices or precisions in one study."""
    mine = {"backend": backend.name, "device": backend.device(), "precision": precision}
    recorded = study.user_attrs.get("latency_backend")
    if recorded is None:
        study.set_user_attr("latency_backend", mine)
    elif recorded != mine:
        raise UsageError(
            f"study {study.study_name!r} measured latency with {recorded}; this process would use {mine}. "
            "Latencies from different engines or devices are not comparable: start a new study (--set name=...)."
        )


def run_study(
    config: StudyConfig, trials: int | None = None, timeout: float | None = None, show_progress: bool = True,
    max_consecutive_failures: int = 5,
) -> optuna.Study:
    """Create or resume the study and run trials until `trials` have completed (or `timeout` passes)."""
    target = trials or config.search.trials
    timeout = timeout or config.search.timeout
    optuna.logging.set_verbosity(logging.WARNING)
    torch.set_num_threads(config.train.threads or os.cpu_count() or 1)
    freeze_config(config)
    ctx = build_context(config)
    study = create_or_load_study(config)
    check_backend(study, ctx.backend, config.latency.precision)
    objective = Objective(config, ctx.space, ctx.data, ctx.backend)
    cap = FailureCap(max_consecutive_failures)
    callbacks = [MaxTrialsCallback(target, states=(TrialState.COMPLETE,)), cap]
    done = completed(study)
    if done < target:
        if show_progress:
            with StudyProgress(target, done, describe(ctx.space)) as bar:
                study.optimize(objective, timeout=timeout, catch=(Exception,), callbacks=[*callbacks, bar])
        else:
            study.optimize(objective, timeout=timeout, catch=(Exception,), callbacks=callbacks)
    if cap.tripped:
        raise UsageError(
            f"stopped after {cap.limit} failed trials in a row; the last error was: "
            f"{study.trials[-1].user_attrs.get('error', 'unknown')}. Fix the recipe and resume."
        )
    return study
