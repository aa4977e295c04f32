"""The Optuna study behind a run directory: storage, creation and re-opening (its sampler from `search.study.samplers`)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from evaluators.latency import LatencyBackend
from search.errors import UsageError
from search.recipe.config import StudyConfig
from search.recipe.frozen import (
    CONFIG_FILE,
    check_and_freeze,
    read_run_config,
    remove_failed_start,
    run_dir_storage,
    sqlite_file,
)
from search.results.record import evaluated
from search.study.recovery import grace_period, recover_stale_trials
from search.study.samplers import make_sampler
from search.trial.locks import locked
from spaces import Space

OBJECTIVES = ("accuracy", "latency_ms")
DIRECTIONS = ("maximize", "minimize")
STORAGE_ATTEMPTS = 3


def storage_url(config: StudyConfig) -> str:
    """The recipe's storage URL, or SQLite `study.db` inside the run directory."""
    return config.storage or run_dir_storage(config.run_dir)


def sqlite_damage(url: str) -> str | None:
    """What SQLite's quick check finds wrong with the database file of `url` (None where nothing is, where the file
    does not exist yet, or where `url` is not SQLite): a damaged file would otherwise fail some query later, with
    a traceback."""
    found = sqlite_file(url)
    if found is None or not found[0].is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{found[0].resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError:
        return None  # busy or locked: opening it says so
    except sqlite3.DatabaseError as exc:
        return str(exc)
    problems = [line for (text,) in rows for line in str(text).splitlines() if line != "ok" and "***" not in line]
    return None if not problems else "; ".join(problems[:2])


def make_storage(url: str, heartbeat_interval: int = 10) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats, so trials of a killed process are found stale and retried (twice at most). A
    damaged SQLite file is a UsageError that says so."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    damage = sqlite_damage(url)
    if damage:
        raise UsageError(
            f"storage {sqlite_file(url)[0]}: the study database is damaged ({damage}); restore it from a copy, or "
            "delete it to start the study again (its trials are lost)"
        )

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 reads this as psycopg 3; the project ships psycopg2
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period(heartbeat_interval),
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Processes opening a fresh database at once race to create its tables; the losers retry.
            if attempt == STORAGE_ATTEMPTS:
                raise
            attempt += 1
            time.sleep(1.0)
        except sqlalchemy.exc.OperationalError as exc:
            raise UsageError(f"storage {sqlalchemy.engine.make_url(url)}: cannot open it: {exc.orig}") from None
        except (sqlalchemy.exc.ArgumentError, ImportError) as exc:
            raise UsageError(
                f"storage {url!r}: not a usable database URL ({exc}); expected sqlite:///path/to/study.db or "
                "postgresql://user@host:5432/database"
            ) from None


def stored_evaluations(config: StudyConfig) -> int:
    """How many candidates the study of the recipe's run has evaluated so far (0 where it has no study, or its
    SQLite file does not exist: it is not created to find out)."""
    url = storage_url(config)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return 0
    try:
        study = optuna.load_study(study_name=config.name, storage=make_storage(url, config.search.heartbeat_interval))
    except KeyError:
        return 0
    return completed(study)


@contextmanager
def frozen_recipe(config: StudyConfig) -> Iterator[None]:
    """Freeze the resolved recipe (with its storage URL) into the run directory, refusing one that changes an
    existing study with evaluated trials (see search/recipe/frozen.py). Wraps the opening of the study: if that fails
    where no recipe was frozen yet, what this start made is taken back (the frozen recipe, the database, empty lock
    files; the directory where it made that too), so a corrected command (another --storage, a data root that
    exists) can start it and no empty run directory is left."""
    fresh = not (config.run_dir / CONFIG_FILE).exists()
    there = frozenset(os.listdir(config.run_dir)) if config.run_dir.is_dir() else frozenset()
    check_and_freeze(config, storage_url(config), lambda: stored_evaluations(config))
    try:
        yield
    except BaseException:
        if fresh:
            remove_failed_start(config.run_dir, kept=there)
        raise


def load_run_config(run_dir: str | Path) -> StudyConfig:
    """The frozen recipe of an existing run directory, located where the directory is now."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); start one with `slimsearch run`")
    return read_run_config(run_dir)


def create_or_load_study(config: StudyConfig) -> optuna.Study:
    """Create the study (two objectives, named metrics) or re-open it to resume."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=make_storage(storage_url(config), config.search.heartbeat_interval),
        study_name=config.name,
        directions=list(DIRECTIONS),
        sampler=make_sampler(config),
        load_if_exists=True,
    )
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES))
    recipe = json.loads(json.dumps(config.dump()))
    if study.user_attrs.get("recipe") != recipe and ("recipe" not in study.user_attrs or completed(study) == 0):
        study.set_user_attr("recipe", recipe)  # the recipe of a study with no result yet may still be corrected
    return study


def enqueue_anchors(study: optuna.Study, space: Space, config: StudyConfig, trials: int | None = None) -> int:
    """Queue the space's anchor policies (`search.anchors` of them per precision; see the compress space) as
    the first trials of a study that has none yet, if they take at most half of the run's `trials` (default
    `search.trials`; a budget they would fill leaves them out); returns how many were queued. Processes
    starting the same study together queue them once."""
    if config.search.anchors == 0:
        return 0
    with locked(config.run_dir / "anchors.lock"):
        if study.get_trials(deepcopy=False):
            return 0
        params = space.anchors(config.search.anchors)
        if not params or len(params) > (trials or config.search.trials) // 2:
            return 0
        for p in params:
            study.enqueue_trial(p, user_attrs={"anchor": True}, skip_if_exists=True)
    return len(params)


def open_study(run_dir: str | Path) -> tuple[StudyConfig, optuna.Study]:
    """Re-open the study of a run directory for reading (status, pareto, export)."""
    config = load_run_config(run_dir)
    try:
        study = optuna.load_study(
            study_name=config.name,
            storage=make_storage(storage_url(config), config.search.heartbeat_interval),
            sampler=make_sampler(config),
        )
    except KeyError:
        raise UsageError(f"{run_dir}: study {config.name!r} not found in {storage_url(config)}") from None
    return config, study


def completed(study: optuna.Study) -> int:
    """How many candidates the study has evaluated (the number `search.trials` and `--trials` ask for)."""
    return sum(evaluated(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def check_backend(study: optuna.Study, backend: LatencyBackend, precision: str) -> None:
    """Refuse to mix latencies from different backends, devices or precisions in one study."""
    mine = {"backend": backend.name, "device": backend.device(), "precision": precision}
    recorded = study.user_attrs.get("latency_backend")
    if recorded is None or (recorded != mine and completed(study) == 0):
        study.set_user_attr("latency_backend", mine)
    elif recorded != mine:
        raise UsageError(
            f"study {study.study_name!r} measured latency with {recorded}; this process would use {mine}. "
            "Latencies from different engines or devices are not comparable: start a new study (--set name=...)."
        )


def open_for_run(config: StudyConfig) -> optuna.Study:
    """The study a parent process runs workers on: the recipe frozen, the study created or re-opened, and the
    trials of dead workers failed and queued again, so the workers neither race to create it nor wait on them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with frozen_recipe(config):
        study = create_or_load_study(config)
    recover_stale_trials(study)
    return study
