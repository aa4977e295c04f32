"""Trials as Ray Tune trials (`slimsearch run --executor ray`), on a local Ray or an existing cluster.

The driver holds the Optuna study through Ray's `OptunaSearch`: its define-by-run space samples the
candidate with the recipe's space, so the Optuna trial in the storage gets its parameters before Tune
starts it. Each Tune trial then runs on a Ray worker with the resources asked for, re-opens that
Optuna trial by id, and evaluates it with the same `Objective` as the local executor: the parameters
are already in the storage, so the candidate is the one the sampler chose, and the user attributes
(candidate, cost, accuracy, latency, seconds, error) land on the trial exactly as they do locally.
The trial's metrics go back to Tune, and `OptunaSearch` tells the study.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from typing import Iterator

import optuna
import ray
import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search.errors import UsageError
from search.recipe.config import StudyConfig, validate_config
from search.results.artifacts import PruneArtifacts, artifact_store
from search.results.record import TrialRecord
from search.study.after_trial import AfterTrial
from search.study.executors.base import time_left
from search.study.executors.ray_searcher import CANDIDATE, PRUNED, TRIAL_ID, TRIAL_NUMBER, StudySearcher
from search.study.progress import StudyProgress
from search.study.samplers import make_sampler
from search.study.storage import (
    DIRECTIONS,
    OBJECTIVES,
    check_backend,
    completed,
    enqueue_anchors,
    make_storage,
    open_for_run,
    storage_url,
)
from search.trial.build import SamplingSpace, build_context, make_objective, sampling_space
from search.trial.context import make_backend, recipe_data
from search.trial.locks import record_protocol
from search.trial.objective import Objective
from search.trial.suggest import OptunaSuggest
from spaces import Space

_STORAGES: dict[str, optuna.storages.BaseStorage] = {}
_OBJECTIVES: dict[str, Objective] = {}


class CandidateSpace:
    """The define-by-run space handed to `OptunaSearch`: samples a candidate on the Optuna trial and returns it
    with which Optuna trial it is, so the Tune trial evaluates that very candidate of that very trial."""

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, object]:
        candidate = self.space.sample(OptunaSuggest(trial))
        return {TRIAL_ID: trial._trial_id, TRIAL_NUMBER: trial.number, CANDIDATE: json.dumps(candidate)}


def evaluate(config: dict, recipe: dict, threads: int, sampling: SamplingSpace) -> dict[str, object]:
    """One Tune trial, on a Ray worker: evaluate the candidate the driver sampled on its Optuna trial. Returns its
    metrics, or no metrics when it failed or was pruned (the reason is on the Optuna trial's `error` attribute).
    The storage and the objective (data, backend, and the driver's space and latency table) are built once per
    worker process, for its next trials."""
    study_config = validate_config(recipe, "recipe")
    key = json.dumps(recipe, sort_keys=True)
    if key not in _STORAGES:
        _STORAGES[key] = make_storage(storage_url(study_config), study_config.search.heartbeat_interval)
    study = optuna.load_study(
        study_name=study_config.name, storage=_STORAGES[key], sampler=optuna.samplers.RandomSampler()
    )
    trial = optuna.Trial(study, config[TRIAL_ID])
    try:
        if key not in _OBJECTIVES:
            ctx = build_context(study_config, sampling)
            _OBJECTIVES[key] = make_objective(ctx)
        objective = _OBJECTIVES[key]
        check_backend(study, objective.backend, study_config.latency.precision)
    except Exception as exc:  # this node cannot evaluate the study (data, backend): say why on the trial
        reason = str(exc) if isinstance(exc, UsageError) else f"{type(exc).__name__}: {exc}"
        TrialRecord().save(trial, error=reason)
        return {"error": reason}
    torch.set_num_threads(threads)
    try:
        accuracy, latency_ms = objective(trial, json.loads(config[CANDIDATE]))
    except optuna.TrialPruned as exc:
        return {PRUNED: str(exc)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return dict(zip(OBJECTIVES, (accuracy, latency_ms)))


def run_ray(
    config: StudyConfig, trials: int | None = None, timeout: float | None = None, show_progress: bool = True,
    address: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
    max_concurrent: int | None = None, max_consecutive_failures: int | None = None,
) -> optuna.Study:
    """Run the study as Ray Tune trials until `trials` have completed (or `timeout` passes); returns the study.

    Uses the Ray this process is connected to, else starts a local one (or connects to `address`) and
    shuts down what it started."""
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise UsageError("--cpus-per-trial must be positive and --gpus-per-trial not negative")
    begun = time.monotonic()
    target = trials or config.search.trials
    timeout = timeout or config.search.timeout
    max_consecutive_failures = max_consecutive_failures or config.search.max_consecutive_failures
    study = open_for_run(config)
    if completed(study) >= target:
        return study
    started = not ray.is_initialized()
    if started:
        _start_ray(address)
    try:
        return _tune(config, study, target, timeout, begun, show_progress, cpus_per_trial, gpus_per_trial,
                     max_concurrent, max_consecutive_failures, address)
    finally:
        if started:
            ray.shutdown()


def _start_ray(address: str | None) -> None:
    """Connect to the cluster at `address`, or start a local Ray with this machine's cores."""
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"--address {address}: cannot connect to a Ray cluster there: {exc}") from None


TUNE_ENVIRONMENT = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the legacy output engine honours verbose=0: slimsearch prints the progress
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # a failed or pruned trial reports no metrics, by design
}


@contextlib.contextmanager
def tune_environment() -> Iterator[None]:
    """Tune as slimsearch runs it (`TUNE_ENVIRONMENT`), without the warning that the storage's heartbeats
    are kept outside `Study.optimize` (the searcher keeps them); the process environment is restored after."""
    previous = {name: os.environ.get(name) for name in TUNE_ENVIRONMENT}
    os.environ.update(TUNE_ENVIRONMENT)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def _sampling_space(config: StudyConfig) -> SamplingSpace:
    """The space the driver samples from and ships to the workers, built here once: a compression study's base is
    prepared once, and with a latency table the driver samples from the same staircase the workers score."""
    backend = None
    if config.latency.table is not None:
        try:
            backend = make_backend(config.latency, config.run_dir / "tensorrt")
        except UsageError as exc:
            raise UsageError(
                f"{exc}. With latency.table the Ray driver opens the table on this engine (the space samples from "
                "it): run the driver where the latency backend runs"
            ) from None
    return sampling_space(config, recipe_data(config), backend)


def _tune(
    config: StudyConfig, study: optuna.Study, target: int, timeout: float | None, begun: float, show_progress: bool,
    cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None, max_consecutive_failures: int,
    address: str | None,
) -> optuna.Study:
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    concurrent = max_concurrent or max(1, int(cluster_cpus // cpus_per_trial))
    record_protocol(study, "ray", concurrent, address=address or "local", cpus_per_trial=cpus_per_trial,
                    gpus_per_trial=gpus_per_trial)
    sampling = _sampling_space(config)
    space = sampling.space
    enqueue_anchors(study, space, config, target)
    storage = make_storage(storage_url(config), config.search.heartbeat_interval)
    optuna_search = OptunaSearch(
        space=CandidateSpace(space), metric=list(OBJECTIVES),
        mode=["max" if d == "maximize" else "min" for d in DIRECTIONS],
        sampler=make_sampler(config), storage=storage, study_name=config.name,
    )
    progress = StudyProgress(target, completed(study), space.describe, bar=show_progress)
    after_trial = AfterTrial(PruneArtifacts(artifact_store(config.run_dir)), progress)
    left = time_left(timeout, begun)  # preparing the sampling space (the base, a latency table) counts
    searcher = StudySearcher(optuna_search, study, storage, target, left, max_consecutive_failures, after_trial)
    run_dir = config.run_dir.resolve()
    # Ray workers run in their own working directory (another machine, even): give them absolute paths.
    worker_recipe = config.model_copy(
        update={"output_dir": str(run_dir.parent), "storage": storage_url(config)}
    ).dump()
    threads = config.train.threads or max(1, int(cpus_per_trial))
    trainable = tune.with_parameters(evaluate, recipe=worker_recipe, threads=threads, sampling=sampling)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, max_concurrent_trials=concurrent, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(run_dir / "ray"), verbose=0),
    )
    try:
        with searcher.heartbeats(), tune_environment(), progress:
            tuner.fit()
    finally:
        abandoned = searcher.abandon_live("the Ray run was stopped before this trial finished")
    if abandoned:
        raise KeyboardInterrupt  # Tune ends early only when interrupted; the CLI says how to resume
    if searcher.failures.tripped:
        last = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))[-1]
        raise searcher.failures.error(TrialRecord.of(last).error or "unknown")
    return study
