"""A study whose first trials all failed takes the corrected recipe; one with results refuses a changed recipe,
and `validate` says which of the two `run` would do."""

from __future__ import annotations

import yaml
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config
from search.study.storage import create_or_load_study, frozen_recipe


def test_a_study_without_results_takes_the_corrected_recipe(recipe_file, capsys):
    recipe = recipe_file(**{"search.trials": 1})
    config = load_config(recipe, ["train.lr=9"])
    with frozen_recipe(config):
        study = create_or_load_study(config)
    study.tell(study.ask(), state=TrialState.FAIL)  # what a recipe whose every trial fails leaves behind

    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "no evaluated trial" in out and "train.lr" in out and "will freeze this one" in out

    assert main(["run", str(recipe), "--no-progress"]) == 0
    assert "the recipe differs" not in capsys.readouterr().err
    frozen = yaml.safe_load((config.run_dir / "config.yaml").read_text())
    assert frozen["train"]["lr"] == 0.1
    study = create_or_load_study(load_config(recipe))
    assert study.user_attrs["recipe"]["train"]["lr"] == 0.1

    assert main(["validate", str(recipe), "--set", "train.lr=0.2"]) == 2
    err = capsys.readouterr().err
    assert f"train.lr: 0.1 in {config.run_dir / 'config.yaml'}, 0.2 in the recipe" in err and "Traceback" not in err
    assert main(["run", str(recipe), "--set", "train.lr=0.2", "--no-progress"]) == 2
    assert "train.lr: 0.1 in" in capsys.readouterr().err
    assert main(["validate", str(recipe)]) == 0
    assert "`run` resumes it" in capsys.readouterr().out
