"""Recipe constraints: recorded on each trial, told to the sampler, kept off the front, shown as infeasible."""

from __future__ import annotations

import pandas as pd
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config
from search.results.artifacts import trial_artifacts
from search.results.front import front_numbers
from search.results.pareto import trials_frame
from search.results.record import TrialRecord
from search.study.executors.inprocess import run_study
from search.study.storage import create_or_load_study
from search.trial.constraints import apply_constraints


def test_params_limit_splits_trials_and_front(recipe_file, capsys):
    recipe = recipe_file(**{"search.trials": 3, "search.startup_trials": 3})
    free = run_study(load_config(recipe, ["name=free"]), show_progress=False)
    params = sorted(t.user_attrs["params"] for t in free.get_trials(states=(TrialState.COMPLETE,)))
    assert params[0] < params[-1], "the three candidates should differ in size"
    limit = params[0]

    config = load_config(recipe, ["name=limited", f"constraints.params={limit}"])
    study = run_study(config, show_progress=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["params"] for t in done) == params  # same seed, same candidates
    for t in done:
        expected = (t.user_attrs["params"] - limit) / limit
        assert t.user_attrs["constraints"] == {"params": pytest.approx(expected)}
        assert t.user_attrs["feasible"] == (t.user_attrs["params"] <= limit)
        assert t.constraints == {"params": pytest.approx(expected)}  # what TPE and NSGA-II read
    infeasible = {t.number for t in done if not t.user_attrs["feasible"]}
    assert infeasible and len(infeasible) < len(done)

    front = front_numbers(study)
    assert front and not front & infeasible
    assert not any(trial_artifacts(t) for t in done if t.number in infeasible)
    df = trials_frame(study)
    assert not df.loc[df["front"], "trial"].isin(infeasible).any()
    assert {t.number for t in study.best_trials} == front  # Optuna's own front agrees

    assert main(["status", str(config.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "feasible" in out and f"{len(infeasible)} infeasible" in out
    assert main(["pareto", str(config.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "infeasible (off the front" in out and all(f"#{n}" in out for n in infeasible)
    csv = pd.read_csv(config.run_dir / "pareto.csv")
    assert set(csv["trial"]) == front
    html = (config.run_dir / "pareto.html").read_text()
    assert '"name":"infeasible (constraints)"' in html and '"name":"base"' not in html

    study.set_user_attr("base", {"accuracy": 0.9, "latency_ms": 0.05})
    assert main(["pareto", str(config.run_dir)]) == 0
    assert '"name":"base"' in (config.run_dir / "pareto.html").read_text()


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2"])
def test_recorded_constraints_reach_optuna(recipe_file, sampler):
    config = load_config(recipe_file(**{"search.sampler": sampler}),
                         ["constraints.latency_ms=0.5", "constraints.accuracy=0.9", "constraints.params=1000"])
    study = create_or_load_study(config)
    over = study.ask()  # better on both objectives, but too many parameters
    assert not apply_constraints(over, TrialRecord(), config.constraints, accuracy=0.95, latency_ms=0.25,
                                 params=1500)
    study.tell(over, (0.95, 0.25))
    within = study.ask()
    assert apply_constraints(within, TrialRecord(), config.constraints, accuracy=0.92, latency_ms=0.4, params=900)
    study.tell(within, (0.92, 0.4))
    first = study.trials[0]
    assert first.constraints == {"latency_ms": pytest.approx(-0.5), "params": pytest.approx(0.5),
                                 "accuracy": pytest.approx(-0.05)}
    assert first.user_attrs["constraints"] == first.constraints and first.user_attrs["feasible"] is False
    assert [t.number for t in study.best_trials] == [within.number]
    assert front_numbers(study) == {within.number}


def test_bad_constraint_is_a_config_error(recipe_file, capsys):
    assert main(["validate", str(recipe_file()), "--set", "constraints.accuracy=1.5"]) == 2
    assert "constraints.accuracy: Input should be less than or equal to 1" in capsys.readouterr().err
