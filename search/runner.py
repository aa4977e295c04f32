"""Run a study to its requested number of completed trials, one process (the local executor)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from evaluators.data import DataBundle, load_data
from evaluators.latency import (
    BackendUnavailable, LatencyBackend, UnsupportedRequest, get_backend, resolve_backend_name,
)
from search.artifacts import PruneArtifacts, artifact_store
from search.base import space_inputs
from search.config import LatencyConfig, StudyConfig
from search.errors import UsageError
from search.executors.lock import record_protocol
from search.objective import Objective
from search.progress import StudyProgress
from search.recovery import recover_stale_trials
from search.study import create_or_load_study, enqueue_anchors, frozen_recipe
from spaces import Candidate, Space, get_space
from spaces.compress import CompressError


@dataclass
class StudyContext:
    """Everything a trial needs that is built once per process."""

    config: StudyConfig
    data: DataBundle
    space: Space
    backend: LatencyBackend


def recipe_data(config: StudyConfig) -> DataBundle:
    """The recipe's data set, split as the recipe says."""
    return load_data(
        config.data.dataset, config.data.root, config.data.image_size, config.data.val_fraction, config.seed
    )


def build_space(config: StudyConfig, data: DataBundle) -> Space:
    """The recipe's space, shaped for the data's channels, classes and image size (a compression space also
    gets its trained base network)."""
    try:
        return get_space(config.space.type)(
            config.space, in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size,
            **space_inputs(config, data),
        )
    except CompressError as exc:
        raise UsageError(f"space: {exc}") from None


def build_context(config: StudyConfig) -> StudyContext:
    """Load the data, instantiate the space for it, and open the latency backend."""
    data = recipe_data(config)
    space = build_space(config, data)
    backend = make_backend(config.latency, config.run_dir / "tensorrt")
    return StudyContext(config, data, space, backend)


def make_backend(lat: LatencyConfig, cache_dir: Path | None = None) -> LatencyBackend:
    """The latency backend a recipe's `latency:` section asks for (`auto` resolved); TensorRT keeps its engine
    and timing caches in `cache_dir`. A backend that cannot run here, or not at this precision, is a UsageError."""
    try:
        name = resolve_backend_name(lat.backend)
        if name == "tensorrt":
            backend = get_backend(name, cache_dir=cache_dir, min_seconds=lat.max_seconds, cuda_graph=lat.cuda_graph)
        elif name == "torch":
            backend = get_backend(name, threads=lat.threads, max_seconds=lat.max_seconds, target_cv=lat.target_cv,
                                  cuda_graph=lat.cuda_graph)
        elif name == "onnxruntime":
            backend = get_backend(name, threads=lat.threads, max_seconds=lat.max_seconds, target_cv=lat.target_cv)
        else:
            backend = get_backend(name)
    except (BackendUnavailable, UnsupportedRequest) as exc:
        raise UsageError(f"latency.backend={lat.backend}: {exc}") from None
    if lat.precision not in backend.precisions:
        raise UsageError(
            f"latency.precision={lat.precision}: the {backend.name} backend on {backend.device()} runs "
            f"{', '.join(backend.precisions)}"
        )
    return backend


def describe(space: Space) -> Callable[[Candidate], str] | None:
    """The space's one-line candidate summary, if it offers one."""
    return getattr(space, "describe", None)


def completed(study: optuna.Study) -> int:
    """How many trials of the study have completed."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


class FailureCap:
    """Stop the study after `limit` failed trials in a row, which means the recipe is wrong."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.tripped = False
        self.last_error = ""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        self.last_error = trial.user_attrs.get("error", trial.state.name.lower())
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
    max_consecutive_failures: int | None = None, workers: int = 1, recover: bool = True,
) -> optuna.Study:
    """Create or resume the study and run trials until `trials` have completed (or `timeout` passes).
    `workers` says how many such processes share this machine: they split its cores for training.
    `recover=False` skips the start-up recovery of dead workers' trials (a parent process already did it)."""
    target = trials or config.search.trials
    timeout = timeout or config.search.timeout
    optuna.logging.set_verbosity(logging.WARNING)
    torch.set_num_threads(config.train.threads or max(1, (os.cpu_count() or 1) // workers))
    with frozen_recipe(config):
        ctx = build_context(config)
        study = create_or_load_study(config)
    check_backend(study, ctx.backend, config.latency.precision)
    if recover:
        recover_stale_trials(study)
    enqueue_anchors(study, ctx.space, config, target)
    record_protocol(study, "local", workers)
    objective = Objective(config, ctx.space, ctx.data, ctx.backend)
    cap = FailureCap(max_consecutive_failures or config.search.max_consecutive_failures)
    callbacks = [
        MaxTrialsCallback(target, states=(TrialState.COMPLETE,)), cap, PruneArtifacts(artifact_store(config.run_dir)),
    ]
    done = completed(study)
    if done < target:
        if show_progress:
            with StudyProgress(target, done, describe(ctx.space)) as bar:
                study.optimize(objective, timeout=timeout, catch=(Exception,), callbacks=[*callbacks, bar])
        else:
            study.optimize(objective, timeout=timeout, catch=(Exception,), callbacks=callbacks)
    if cap.tripped:
        raise UsageError(
            f"stopped after {cap.limit} failed trials in a row (search.max_consecutive_failures); the last error "
            f"was: {cap.last_error}. Fix the recipe and resume."
        )
    return study
