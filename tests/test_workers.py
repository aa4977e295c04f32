"""Local worker processes on one SQLite study, the per-machine latency lock, and per-process seeding."""

from __future__ import annotations

import json
import threading

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config
from search.study.seeding import process_seed
from search.study.storage import create_or_load_study, open_study
from search.trial.locks import MachineLock
from search.trial.suggest import OptunaSuggest
from spaces import get_space


def test_two_workers_share_a_sqlite_study(recipe_file, capsys):
    recipe = recipe_file()
    assert main(["run", str(recipe), "--workers", "2", "--trials", "3", "--no-progress"]) == 0
    config = load_config(recipe)
    _, study = open_study(config.run_dir)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert 3 <= len(done) <= 3 + 1, "the total is respected to within one trial per worker"
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done), "workers drew the same candidate"
    for t in done:
        for key in ("candidate", "accuracy", "latency", "macs", "params", "seconds"):
            assert key in t.user_attrs
        seconds = t.user_attrs["seconds"]
        assert seconds["latency_wait"] <= seconds["total"] and seconds["train_wait"] <= seconds["total"]
    protocol = study.user_attrs["latency_protocol"]
    assert protocol["executor"] == "local" and protocol["workers"] == 2 and protocol["lock"]
    capsys.readouterr()
    assert main(["status", str(config.run_dir)]) == 0
    assert f"({len(done)} complete)" in capsys.readouterr().out


def test_measurement_waits_for_training_and_blocks_new_training(tmp_path):
    trainer, measurer, late_trainer = (MachineLock(tmp_path, host="h") for _ in range(3))
    measured, trained_late = threading.Event(), threading.Event()
    overlaps: list[str] = []

    def measure() -> None:
        with measurer.measuring():
            measured.set()
            if trained_late.wait(0.3):
                overlaps.append("a fine-tune started while a latency was being measured")

    def train_late() -> None:
        with late_trainer.training():
            trained_late.set()

    with trainer.training():
        m = threading.Thread(target=measure)
        m.start()
        assert not measured.wait(0.3), "the measurement started while another process was training"
        t = threading.Thread(target=train_late)
        t.start()
    m.join(5)
    t.join(5)
    assert measured.is_set() and trained_late.is_set()
    assert not overlaps


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_two_processes_on_one_study_sample_different_candidates(recipe_file):
    config = load_config(recipe_file(**{"search.sampler": "random"}))
    config.run_dir.mkdir(parents=True)
    first, second = create_or_load_study(config), create_or_load_study(config)
    space = get_space(config.space.type)(config.space, in_channels=1, num_classes=10, image_size=8)
    drawn = []
    for study in (first, second, first, second):
        trial = study.ask()
        drawn.append(json.dumps(space.sample(OptunaSuggest(trial)), sort_keys=True))
        study.tell(trial, (0.5, 1.0))
    assert len(set(drawn)) == len(drawn)
    assert len({process_seed(config.seed, n) for n in range(50)}) == 50


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_same_seed_fresh_study_draws_what_the_seed_gives(recipe_file):
    config = load_config(recipe_file(**{"search.sampler": "random"}))
    config.run_dir.mkdir(parents=True)
    study = create_or_load_study(config)
    reference = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=config.seed)
    )
    space = get_space(config.space.type)(config.space, in_channels=1, num_classes=10, image_size=8)
    for s in (study, reference):
        trial = s.ask()
        s.set_user_attr("drawn", space.sample(OptunaSuggest(trial)))
    assert study.user_attrs["drawn"] == reference.user_attrs["drawn"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--executor", "ray", "--workers", "2"], "--workers: only for --executor local"),
        (["--max-concurrent", "2"], "--max-concurrent: only for --executor ray"),
    ],
)
def test_executor_flags_that_do_not_fit_are_usage_errors(recipe_file, capsys, flags, message):
    assert main(["run", str(recipe_file()), *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--workers", "0"], "--workers: expected a number above 0, got 0"),
        (["--executor", "ray", "--max-concurrent", "0"], "--max-concurrent: expected a number above 0, got 0"),
        (["--trials", "-1"], "--trials: expected a number above 0, got -1"),
        (["--timeout", "soon"], "--timeout: expected a float, got 'soon'"),
    ],
)
def test_numbers_on_the_command_line_are_checked_before_anything_runs(recipe_file, capsys, flags, message):
    recipe = recipe_file()
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(recipe), *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (recipe.parent / "runs").exists()
