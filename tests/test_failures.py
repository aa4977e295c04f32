"""Failing candidates fail their own trial with the reason stored; a streak of failures stops the study."""

from __future__ import annotations

import optuna
import torch
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config
from search.study.executors.inprocess import run_study
from search.study.storage import create_or_load_study, storage_url


def test_every_candidate_diverging_trips_the_failure_cap(recipe_file, capsys, monkeypatch):
    def diverged(logits: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return (logits * float("nan")).sum()  # the loss of a fine-tune whose weights blew up

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", diverged)
    recipe = recipe_file(**{"search.max_consecutive_failures": 2})
    assert main(["run", str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stopped after 2 failed trials in a row (search.max_consecutive_failures)" in err
    assert "TrainingDiverged: loss became" in err
    config = load_config(recipe)
    study = optuna.load_study(study_name=config.name, storage=storage_url(config))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    for t in study.trials:
        assert t.user_attrs["error"].startswith("TrainingDiverged: loss became")
        assert "candidate" in t.user_attrs


def test_one_bad_candidate_fails_alone_and_the_study_completes(recipe_file, capsys):
    config = load_config(recipe_file(**{"search.trials": 2, "search.max_consecutive_failures": 2}))
    study = create_or_load_study(config)
    study.enqueue_trial({"stem.width": 0}, skip_if_exists=True)  # a stem without channels cannot be built
    study = run_study(config, show_progress=False)
    bad = study.trials[0]
    assert bad.state == TrialState.FAIL
    assert bad.params["stem.width"] == 0
    error = bad.user_attrs["error"]
    assert error.split(":")[0].endswith("Error")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert main(["status", str(config.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 trials (2 complete, 1 fail)" in out and error[:40] in out.replace("\n", "")


def test_a_storage_that_cannot_be_opened_leaves_the_run_directory_free(recipe_file, capsys):
    recipe = recipe_file(**{"search.trials": 1})
    assert main(["run", str(recipe), "--no-progress", "--storage", "not-a-url"]) == 2
    assert "storage 'not-a-url': not a usable database URL" in capsys.readouterr().err
    config = load_config(recipe)
    assert not (config.run_dir / "config.yaml").exists()
    assert main(["run", str(recipe), "--no-progress"]) == 0  # the corrected command starts the study


def test_a_damaged_frozen_recipe_is_reported_not_raised(recipe_file, capsys):
    recipe = recipe_file(**{"search.trials": 1})
    assert main(["run", str(recipe), "--no-progress"]) == 0
    config = load_config(recipe)
    (config.run_dir / "config.yaml").write_text("name: [unclosed\n")
    for argv in (["resume", str(config.run_dir)], ["run", str(recipe)], ["status", str(config.run_dir)]):
        assert main([*argv, "--no-progress"] if argv[0] != "status" else argv) == 2
        err = capsys.readouterr().err
        assert "config.yaml" in err and "not readable YAML" in err and "Traceback" not in err


def test_plain_sgd_without_momentum_trains(recipe_file):
    config = load_config(recipe_file(**{"train.momentum": 0, "search.trials": 1}))
    study = run_study(config, show_progress=False)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
