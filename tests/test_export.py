"""Export of a chosen trial: files, ONNX equal to PyTorch, accuracy re-measured equal to the trial's; the pick rules."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from evaluators.latency import AVAILABILITY
from search.cli import main
from search.errors import UsageError
from search.export.picks import choose_trial, knee, pick_trial
from search.export.trial import rebuild
from search.results.artifacts import WEIGHTS, trial_artifacts
from search.results.front import front_numbers
from search.trial.build import build_context
from tests.conftest import tiny_study

FILES = {"model.pt", "candidate.json", "recipe.yaml", "model.onnx", "card.md", "card.json"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A three-trial digits study, run once for the tests of this module."""
    config, study = tiny_study(tmp_path_factory.mktemp("export"), **{"search.trials": 3})
    trials = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    return config, study, trials


def test_only_trials_on_the_front_keep_weights_and_onnx(finished):
    config, study, trials = finished
    front = front_numbers(study)
    store_files = {p.name for p in (config.run_dir / "artifacts").iterdir()}
    for n, t in trials.items():
        stored = set(trial_artifacts(t).values()) & store_files
        assert (len(stored) == 2) == (n in front), (n, front)


def test_knee_export_writes_its_files_and_a_card_measured_again(finished, tmp_path):
    config, study, trials = finished
    out = tmp_path / "knee"
    assert main(["export", str(config.run_dir), "--pick", "knee", "--out", str(out)]) == 0
    assert FILES <= {p.name for p in out.iterdir()}
    card = json.loads((out / "card.json").read_text())
    chosen = trials[card["trial"]]
    assert card["trial"] in front_numbers(study) and card["chosen_by"] == "--pick knee"
    assert card["accuracy"]["search"] == chosen.user_attrs["accuracy"]
    assert card["accuracy"]["matches_search"]
    assert 0 <= card["accuracy"]["test"] <= 1 and card["accuracy"]["test_images"] > 0
    assert card["onnx"]["matches"] and card["onnx"]["max_abs_diff"] <= 1e-4
    assert card["latency"]["backend"] == chosen.user_attrs["latency"]["backend"]
    assert card["cost"]["params"] == chosen.user_attrs["params"] and card["cost"]["flops"] > 0
    assert card["versus_base"] is None, "a block study has no base network"
    assert json.loads((out / "candidate.json").read_text()) == chosen.user_attrs["candidate"]
    if AVAILABILITY["tensorrt"]() is None:
        assert (out / "model.engine").stat().st_size > 0
    else:
        assert card["tensorrt"]["note"].startswith("not built")
    md = (out / "card.md").read_text()
    assert f"trial #{card['trial']}" in md and "accuracy, test" in md and "ONNX" in md


def test_exported_files_stand_on_their_own(finished, tmp_path):
    config, _, trials = finished
    out = tmp_path / "fastest"
    assert main(["export", str(config.run_dir), "--pick", "fastest", "--out", str(out)]) == 0
    model = rebuild(out)
    x, _ = next(build_context(config).data.val.batches(32))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4


def test_a_longer_fine_tune_at_export_starts_from_the_searched_weights(finished, tmp_path):
    config, study, _ = finished
    fastest = pick_trial(study, "fastest").number
    out = tmp_path / "by-number"
    assert main(["export", str(config.run_dir), "--trial", str(fastest), "--out", str(out),
                 "--finetune-epochs", "0.5"]) == 0
    acc = json.loads((out / "card.json").read_text())["accuracy"]
    assert acc["fine_tune_epochs"] == 0.5 and acc["matches_search"]
    assert abs(acc["before_fine_tune"] - acc["search"]) <= acc["tolerance"]
    assert "more epoch(s) of fine-tuning" in (out / "card.md").read_text()


def test_a_trial_off_the_front_is_refused_for_want_of_weights(finished, tmp_path, capsys):
    config, study, trials = finished
    front = front_numbers(study)
    assert all(WEIGHTS in trial_artifacts(trials[n]) for n in front)
    for n in (n for n in trials if n not in front):
        assert main(["export", str(config.run_dir), "--trial", str(n), "--out", str(tmp_path / "off")]) == 2
        assert f"trial #{n} has no stored weights" in capsys.readouterr().err
        assert not (tmp_path / "off").exists()  # no empty --out folder is left


def test_export_bad_requests_are_usage_errors(finished, tmp_path, capsys):
    run_dir = str(finished[0].run_dir)
    assert main(["export", run_dir, "--pick", "cheapest", "--out", str(tmp_path / "o")]) == 2
    assert "--pick 'cheapest': expected one of fastest, most-accurate, knee" in capsys.readouterr().err
    assert main(["export", run_dir, "--pick", "latency<=0.000001", "--out", str(tmp_path / "o")]) == 2
    assert "no trial on the front meets it" in capsys.readouterr().err
    assert main(["export", run_dir, "--trial", "7", "--out", str(tmp_path / "o")]) == 2
    assert "--trial 7: study" in capsys.readouterr().err


def synthetic_study(points: list[tuple[float, float]], infeasible: tuple[int, ...] = ()) -> optuna.Study:
    """A study whose completed trials have these (accuracy, latency) values."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, values in enumerate(points):
        study.add_trial(create_trial(
            values=list(values), params={"x": float(i)}, distributions={"x": FloatDistribution(0, 100)},
            user_attrs={"feasible": False} if i in infeasible else {},
        ))
    return study


# Front: (0.50, 1 ms), (0.80, 2 ms), (0.85, 6 ms), (0.90, 10 ms); (0.60, 5 ms) is dominated; (0.99, 0.5 ms) breaks a
# constraint. Scaled to [0, 1] over the front, trial 1 lies 0.750 - 0.111 = 0.639 above the fastest-to-most-accurate
# line, trial 2 0.875 - 0.556 = 0.319: the knee is trial 1.
POINTS = [(0.50, 1.0), (0.80, 2.0), (0.85, 6.0), (0.90, 10.0), (0.60, 5.0), (0.99, 0.5)]


@pytest.mark.parametrize("rule, expected", [
    ("fastest", 0), ("most-accurate", 3), ("knee", 1), ("latency<=6", 2), ("latency<=5.99", 1),
    ("accuracy>=0.82", 2), ("accuracy >= 0.5", 0),
])
def test_pick_rules_choose_from_the_feasible_front(rule, expected):
    assert pick_trial(synthetic_study(POINTS, infeasible=(5,)), rule).number == expected


@pytest.mark.parametrize("rule, message", [
    ("latency<=0.9", "no trial on the front meets it; the front is #0 (0.5000, 1.0000 ms)"),
    ("accuracy<=0.5", "expected one of fastest, most-accurate, knee"),
    ("accuracy>=0.95", "no trial on the front meets it"),
])
def test_a_pick_no_front_trial_meets_is_a_usage_error(rule, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pick_trial(synthetic_study(POINTS, infeasible=(5,)), rule)


def test_knee_of_a_straight_front_is_the_more_accurate_end_and_of_one_trial_that_trial():
    line = synthetic_study([(0.5, 1.0), (0.7, 2.0), (0.9, 3.0)])
    assert knee(line.trials).number == 2
    assert knee(synthetic_study([(0.5, 1.0)]).trials).number == 0


def test_a_study_without_a_feasible_trial_has_nothing_to_export():
    with pytest.raises(UsageError, match="no completed feasible trial yet"):
        choose_trial(synthetic_study([(0.9, 1.0)], infeasible=(0,)), None, "knee")
