"""Crash-safe resume: a study SIGKILLed mid-trial and resumed loses nothing and leaves nothing RUNNING."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config
from search.study.recovery import recover_stale_trials
from search.study.storage import create_or_load_study, frozen_recipe, storage_url

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]


def wait_for_running_trial(proc: subprocess.Popen, db: Path, timeout: float = 300) -> None:
    """Poll the SQLite storage until a trial has completed and another one is running its candidate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the study ended before it could be killed:\n{proc.stdout.read()}"
        if db.is_file():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                    done = con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
                    running = con.execute(
                        "SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                        "WHERE t.state = 'RUNNING' AND a.key = 'candidate'"
                    ).fetchone()[0]
            except sqlite3.OperationalError:  # tables not created yet, or the writer holds the lock
                done = running = 0
            if done >= 1 and running >= 1:
                return
        time.sleep(0.05)
    raise AssertionError("no trial was running after the first completed one")


def snapshot(study: optuna.Study) -> dict[int, tuple]:
    done = study.get_trials(states=(TrialState.COMPLETE,))
    return {t.number: (t.values, t.params, t.user_attrs["candidate"]) for t in done}


def test_sigkill_mid_trial_then_resume(recipe_file, capsys):
    recipe = recipe_file(**{"search.trials": 3, "search.heartbeat_interval": 1})
    config = load_config(recipe)
    db = config.run_dir / "study.db"
    proc = subprocess.Popen(cli("run", str(recipe), "--no-progress"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_running_trial(proc, db)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    url = storage_url(config)
    before = optuna.load_study(study_name=config.name, storage=url)
    killed = [t.number for t in before.get_trials(states=(TrialState.RUNNING,))]
    assert len(killed) == 1
    kept = snapshot(before)
    assert kept

    res = subprocess.run(cli("resume", str(config.run_dir), "--no-progress"), cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"#{killed[0]} had lost their worker" in res.stderr
    assert "Pareto front of" in res.stdout

    after = optuna.load_study(study_name=config.name, storage=url)
    assert len(after.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert not after.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    now = snapshot(after)
    assert {n: now[n] for n in kept} == kept
    dead = after.trials[killed[0]]
    assert dead.state == TrialState.FAIL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retries = [t for t in after.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed[0]]
    assert len(retries) == 1 and retries[0].params == dead.params and retries[0].state == TrialState.COMPLETE

    # A recipe that changes the study is refused, naming the field; config.yaml is left as it was.
    frozen = (config.run_dir / "config.yaml").read_text()
    assert main(["run", str(recipe), "--set", "train.epochs=1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"train.epochs: 0.5 in {config.run_dir / 'config.yaml'}, 1.0 in the recipe" in err
    assert "--set name=" in err
    assert (config.run_dir / "config.yaml").read_text() == frozen

    # More trials (or a time limit) may be asked of the same study: the frozen config records them.
    with frozen_recipe(load_config(recipe, ["search.trials=5", "search.timeout=60"])):
        pass
    refrozen = yaml.safe_load((config.run_dir / "config.yaml").read_text())
    assert refrozen["search"]["trials"] == 5 and refrozen["search"]["timeout"] == 60
    assert {k: v for k, v in refrozen.items() if k != "search"} == {
        k: v for k, v in yaml.safe_load(frozen).items() if k != "search"
    }


def test_trial_killed_before_its_first_heartbeat_is_recovered(recipe_file):
    config = load_config(recipe_file(**{"search.heartbeat_interval": 1}))
    study = create_or_load_study(config)
    orphan = study.ask()  # RUNNING, and no heartbeat was ever recorded for it
    orphan.suggest_int("stem.width", 8, 24, step=8)
    said: list[str] = []
    assert recover_stale_trials(study, say=said.append) == [orphan.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[orphan.number] == TrialState.FAIL
    assert study.trials[orphan.number].user_attrs["error"] == "worker lost (heartbeat stale)"
    assert [t.state for t in study.trials if t.number != orphan.number] == [TrialState.WAITING]
    assert all("error" not in t.user_attrs for t in study.trials if t.number != orphan.number)
    assert any("marked running" in s for s in said)


def test_live_trial_is_left_running(recipe_file):
    config = load_config(recipe_file(**{"search.heartbeat_interval": 1}))
    study = create_or_load_study(config)
    live = study.ask()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            study._storage.record_heartbeat(live._trial_id)
            stop.wait(0.5)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        time.sleep(1.2)
        assert recover_stale_trials(study, say=lambda s: None) == []
        assert study.trials[live.number].state == TrialState.RUNNING
    finally:
        stop.set()
        beater.join()


def test_resume_of_missing_run_dir_is_usage_error(tmp_path, capsys):
    assert main(["resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_moved_run_directory_resumes_from_its_own_database(recipe_file, tmp_path, capsys):
    recipe = recipe_file(**{"search.trials": 1})
    config = load_config(recipe)
    assert main(["run", str(recipe), "--no-progress"]) == 0
    moved = tmp_path / "elsewhere" / config.name
    moved.parent.mkdir()
    config.run_dir.rename(moved)
    capsys.readouterr()

    assert main(["resume", str(moved), "--trials", "2", "--no-progress"]) == 0
    assert "the recipe differs" not in capsys.readouterr().err
    study = optuna.load_study(study_name=config.name, storage=f"sqlite:///{moved / 'study.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert not config.run_dir.exists()
    assert main(["status", str(moved)]) == 0
    assert "2 trials (2 complete)" in capsys.readouterr().out


def test_a_resume_goes_on_to_the_budget_of_the_run_it_resumes(recipe_file):
    recipe = recipe_file(**{"search.trials": 3})
    assert main(["run", str(recipe), "--trials", "1", "--no-progress"]) == 0
    run_dir = load_config(recipe).run_dir

    def done() -> int:
        return len(optuna.load_study(study_name=load_config(recipe).name, storage=storage_url(load_config(recipe)))
                   .get_trials(states=(TrialState.COMPLETE,)))

    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    assert done() == 1, "the run asked for 1 trial, not the recipe's 3"
    assert main(["resume", str(run_dir), "--trials", "2", "--no-progress"]) == 0
    assert done() == 2
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    assert done() == 2 and yaml.safe_load((run_dir / "config.yaml").read_text())["search"]["trials"] == 2
