"""The Optuna study behind a run directory: storage, sampler, creation and re-opening."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml

from search.config import StudyConfig, validate_config
from search.errors import UsageError

OBJECTIVES = ("accuracy", "latency_ms")
DIRECTIONS = ("maximize", "minimize")
CONFIG_FILE = "config.yaml"


def storage_url(config: StudyConfig) -> str:
    """The recipe's storage URL, or SQLite `study.db` inside the run directory."""
    if config.storage:
        return config.storage
    return f"sqlite:///{(config.run_dir / 'study.db').resolve()}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats, so trials of a killed process are found stale and retried."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=10,
            grace_period=30,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        )


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The recipe's sampler, seeded, so the same recipe samples the same candidates."""
    s = config.search
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=s.startup_trials, multivariate=True)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=config.seed, population_size=s.population_size)
    return optuna.samplers.RandomSampler(seed=config.seed)


def freeze_config(config: StudyConfig) -> Path:
    """Write the resolved recipe (with its storage URL) into the run directory."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    data = config.dump()
    data["storage"] = storage_url(config)
    path = config.run_dir / CONFIG_FILE
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_run_config(run_dir: str | Path) -> StudyConfig:
    """The frozen recipe of an existing run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); start one with `slimsearch run`")
    return validate_config(yaml.safe_load(path.read_text()), str(path))


def create_or_load_study(config: StudyConfig) -> optuna.Study:
    """Create the study (two objectives, named metrics) or re-open it to resume."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=make_storage(storage_url(config)),
        study_name=config.name,
        directions=list(DIRECTIONS),
        sampler=make_sampler(config),
        load_if_exists=True,
    )
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES))
    if "recipe" not in study.user_attrs:
        study.set_user_attr("recipe", json.loads(json.dumps(config.dump())))
    return study


def open_study(run_dir: str | Path) -> tuple[StudyConfig, optuna.Study]:
    """Re-open the study of a run directory for reading (status, pareto, export)."""
    config = load_run_config(run_dir)
    try:
        study = optuna.load_study(
            study_name=config.name, storage=make_storage(storage_url(config)), sampler=make_sampler(config)
        )
    except KeyError:
        raise UsageError(f"{run_dir}: study {config.name!r} not found in {storage_url(config)}") from None
    return config, study
