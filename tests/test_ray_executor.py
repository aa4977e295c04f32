"""The Ray executor on a real local Ray (2 CPUs): Tune trials whose results land in the study's Optuna storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config
from search.study.storage import open_study
from search.trial.build import build_context
from search.trial.suggest import OptunaSuggest
from tests.test_compress_study import recipe as compress_recipe
from tests.test_staircase import recipe as staircase_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with two CPUs, shared by the tests of this module and shut down after them."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_trials_land_in_the_study_like_local_ones(recipe_file, local_ray, capsys):
    recipe = recipe_file()
    assert main(["run", str(recipe), "--trials", "1", "--no-progress"]) == 0
    ray_run = ["--executor", "ray", "--trials", "3", "--max-concurrent", "2", "--no-progress"]
    assert main(["run", str(recipe), *ray_run]) == 0

    config = load_config(recipe)
    _, study = open_study(config.run_dir)
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert len(done) == 3
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 3, "two Tune trials evaluated one candidate"
    local, *by_ray = done
    assert by_ray, "the Ray run added no trial"
    for t in by_ray:
        assert set(t.user_attrs) == set(local.user_attrs)
        assert set(t.user_attrs["seconds"]) == set(local.user_attrs["seconds"])
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["latency"]["median_ms"]]
        assert t.user_attrs["candidate"] and t.user_attrs["macs"] > 0
    assert study.metric_names == ["accuracy", "latency_ms"]
    protocol = study.user_attrs["latency_protocol"]
    assert protocol["executor"] == "ray" and protocol["workers"] == 2

    capsys.readouterr()
    assert main(["status", str(config.run_dir)]) == 0
    assert "(3 complete)" in capsys.readouterr().out


def test_a_ray_compression_study_evaluates_its_anchor_policies_first(tmp_path, local_ray):
    path = tmp_path / "prune.yaml"
    raw = compress_recipe(tmp_path, search={"sampler": "random", "trials": 4, "anchors": 1})
    path.write_text(json.dumps(raw))
    assert main(["run", str(path), "--executor", "ray", "--max-concurrent", "1", "--no-progress"]) == 0
    _, study = open_study(load_config(path).run_dir)
    trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert len(trials) == 4
    assert [t.user_attrs.get("anchor", False) for t in trials] == [True, True, False, False]
    assert [(set(t.user_attrs["candidate"]["keep"].values()), t.user_attrs["candidate"]["precision"])
            for t in trials[:2]] == [({0.6}, "fp16"), ({0.6}, "int8")]


def test_a_ray_study_samples_once_from_the_workers_latency_staircase(tmp_path, local_ray, monkeypatch):
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "stairs.yaml"
    path.write_text(json.dumps(staircase_recipe(tmp_path, search={"sampler": "random", "trials": 5, "anchors": 1})))
    assert main(["run", str(path), "--executor", "ray", "--max-concurrent", "2", "--no-progress"]) == 0
    config = load_config(path)
    _, study = open_study(config.run_dir)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 5
    policies = {t.user_attrs["candidate"]["policy"] for t in done}
    assert policies == {"group", "latency_greedy"}  # the driver samples the policy that needs the table
    space = build_context(config).space  # the table is cached now: the space the driver sampled from
    for t in done:
        assert not any(name.startswith("keep.") for name in t.params), t.params  # staircase widths, not ratios
        assert t.user_attrs["candidate"] == space.sample(OptunaSuggest(optuna.trial.FixedTrial(t.params)))


def test_ray_trials_that_fail_say_why_and_a_streak_stops_the_study(recipe_file, local_ray, capsys):
    recipe = recipe_file(**{"latency.backend": "tensorrt", "search.max_consecutive_failures": 2})
    assert main(["run", str(recipe), "--executor", "ray", "--trials", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stopped after 2 failed trials in a row" in err and "tensorrt" in err

    _, study = open_study(load_config(recipe).run_dir)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) >= 2 and not study.get_trials(states=(TrialState.RUNNING, TrialState.COMPLETE))
    assert all("latency.backend=tensorrt" in t.user_attrs["error"] for t in failed)


def _running_trial(db: Path, name: str, deadline: float) -> optuna.trial.FrozenTrial:
    """Wait for the study in `db` to have a RUNNING trial with its candidate sampled."""
    while time.monotonic() < deadline:
        if db.is_file() and name in optuna.get_all_study_names(f"sqlite:///{db}"):
            study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.params]
            if running:
                return running[0]
        time.sleep(0.5)
    raise AssertionError("the Ray run never started a trial")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_killed_ray_run_is_resumed_and_its_stale_trial_retried(recipe_file, local_ray):
    recipe = recipe_file(**{"train.epochs": 3})
    config = load_config(recipe)
    db = (config.run_dir / "study.db").resolve()
    cmd = [sys.executable, "-m", "search.cli", "run", str(recipe), "--executor", "ray", "--trials", "2",
           "--max-concurrent", "1", "--no-progress"]
    driver = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        killed = _running_trial(db, config.name, time.monotonic() + 180)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    time.sleep(35)  # the storage's grace period (30 s) passes: the killed run's trial is now stale

    assert main(["run", str(recipe), "--executor", "ray", "--trials", "2", "--no-progress"]) == 0
    study = optuna.load_study(study_name=config.name, storage=f"sqlite:///{db}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert study.trials[killed.number].state == TrialState.FAIL
    retries = [t for t in study.trials if RetryFailedTrialCallback.retried_trial_number(t) == killed.number]
    assert retries and retries[0].params == killed.params and retries[0].state == TrialState.COMPLETE
