"""Export of a chosen trial: files, ONNX equal to PyTorch, accuracy re-measured equal to the trial's."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import torch
from optuna.trial import TrialState

from evaluators.latency import AVAILABILITY
from search.artifacts import WEIGHTS, front_numbers, trial_artifacts
from search.cli import main
from search.config import load_config
from search.export import choose_trial, rebuild
from search.runner import build_context, run_study

FILES = {"model.pt", "candidate.json", "recipe.yaml", "model.onnx", "card.md", "card.json"}


def test_export_pick_and_trial(recipe_file, tmp_path, capsys):
    config = load_config(recipe_file(**{"search.trials": 3}))
    study = run_study(config, show_progress=False)
    run_dir = str(config.run_dir)
    front = front_numbers(study)
    trials = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}

    # Weights and ONNX are kept for the trials on the front, and only for them.
    store_files = {p.name for p in (config.run_dir / "artifacts").iterdir()}
    for n, t in trials.items():
        stored = set(trial_artifacts(t).values()) & store_files
        assert (len(stored) == 2) == (n in front), (n, front)

    out = tmp_path / "knee"
    assert main(["export", run_dir, "--pick", "knee", "--out", str(out)]) == 0
    assert FILES <= {p.name for p in out.iterdir()}
    card = json.loads((out / "card.json").read_text())
    chosen = trials[card["trial"]]
    assert card["trial"] in front and card["chosen_by"] == "--pick knee"
    assert card["accuracy"]["matches_search"]
    assert abs(card["accuracy"]["validation"] - chosen.user_attrs["accuracy"]) <= card["accuracy"]["tolerance"]
    assert card["accuracy"]["search"] == chosen.user_attrs["accuracy"]
    assert 0 <= card["accuracy"]["test"] <= 1 and card["accuracy"]["test_images"] > 0
    assert card["onnx"]["matches"] and card["onnx"]["max_abs_diff"] <= 1e-4
    assert card["latency"]["backend"] == chosen.user_attrs["latency"]["backend"]
    assert card["cost"]["params"] == chosen.user_attrs["params"] and card["cost"]["flops"] > 0
    assert json.loads((out / "candidate.json").read_text()) == chosen.user_attrs["candidate"]
    if AVAILABILITY["tensorrt"]() is None:
        assert (out / "model.engine").stat().st_size > 0
    else:
        assert card["tensorrt"]["note"].startswith("not built")
    md = (out / "card.md").read_text()
    assert f"trial #{card['trial']}" in md and "accuracy, test" in md and "ONNX" in md

    # The files stand on their own: rebuilt PyTorch and ONNX Runtime agree on real images.
    model = rebuild(out)
    x, _ = next(build_context(config).data.val.batches(32))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4

    fastest = min(front, key=lambda n: trials[n].values[1])
    assert choose_trial(study, None, "fastest").number == fastest
    most = max(front, key=lambda n: (trials[n].values[0], -trials[n].values[1]))
    assert choose_trial(study, None, "most-accurate").number == most
    limit = trials[most].values[1]
    assert choose_trial(study, None, f"latency<={limit}").number == most
    assert choose_trial(study, None, f"accuracy>={trials[fastest].values[0]}").number == fastest

    study.set_user_attr("base", {"accuracy": 0.5, "latency_ms": 1.0, "params": 100_000, "flops": 10**7})
    out2 = tmp_path / "by-number"
    assert main(["export", run_dir, "--trial", str(fastest), "--out", str(out2), "--finetune-epochs", "0.5"]) == 0
    card2 = json.loads((out2 / "card.json").read_text())
    assert card2["trial"] == fastest and card2["accuracy"]["fine_tune_epochs"] == 0.5
    assert card2["accuracy"]["matches_search"]
    acc2 = card2["accuracy"]
    versus = card2["versus_base"]
    assert versus["speedup"] == 1.0 / card2["latency"]["median_ms"]
    assert versus["compression"] == 100_000 / card2["cost"]["params"]
    assert versus["flops_reduction"] == 1 - card2["cost"]["flops"] / 10**7
    assert versus["accuracy_change"] == acc2["validation"] - 0.5
    assert "versus base" in (out2 / "card.md").read_text()
    assert abs(acc2["before_fine_tune"] - acc2["search"]) <= acc2["tolerance"]
    capsys.readouterr()

    off_front = [n for n in trials if n not in front]
    for n in off_front:
        assert main(["export", run_dir, "--trial", str(n), "--out", str(tmp_path / "off")]) == 2
        assert f"trial #{n} has no stored weights" in capsys.readouterr().err
    assert all(WEIGHTS in trial_artifacts(trials[n]) for n in front)


def test_export_bad_requests_are_usage_errors(recipe_file, tmp_path, capsys):
    config = load_config(recipe_file(**{"search.trials": 1}))
    run_study(config, show_progress=False)
    run_dir = str(config.run_dir)
    assert main(["export", run_dir, "--pick", "cheapest", "--out", str(tmp_path / "o")]) == 2
    assert "--pick 'cheapest': expected one of fastest, most-accurate, knee" in capsys.readouterr().err
    assert main(["export", run_dir, "--pick", "latency<=0.000001", "--out", str(tmp_path / "o")]) == 2
    assert "no trial on the front meets it" in capsys.readouterr().err
    assert main(["export", run_dir, "--trial", "7", "--out", str(tmp_path / "o")]) == 2
    assert "--trial 7: study" in capsys.readouterr().err
