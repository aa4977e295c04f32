"""A real compression study from the command line: base trained once and measured once, every candidate
physically smaller than the base, adaptive-BN and precision-aware accuracy, comparison with the base, resume."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main
from search.recipe.config import load_config, validate_config
from search.study.executors.inprocess import run_study
from search.trial.build import build_context
from search.trial.context import recipe_data
from search.trial.scoring.base_network import prepare_base
from spaces.compress import fingerprint
from tests.conftest import ONE_THREAD


def recipe(tmp_path, **changes: object) -> dict:
    raw = {
        "name": "tiny_prune",
        "output_dir": str(tmp_path / "runs"),
        "space": {
            "type": "compress",
            "base": {"model": "spaces.compress.nets:tiny_resnet", "kwargs": {"widths": [16, 16, 32]}, "epochs": 1},
            "keep": [0.2, 0.8], "keep_step": 0.2, "rank": [0.25, 1.0], "rank_step": 0.25,
            "importance": ["l1", "taylor"], "precision": ["fp16", "int8"],
        },
        "data": {"dataset": "digits", "image_size": 8},
        "train": {"epochs": 0.5, "kd_alpha": 0.5, "bn_batches": 2, "threads": ONE_THREAD},
        "latency": {"backend": "onnxruntime", "max_seconds": 0.2},
        "search": {"sampler": "random", "trials": 3},
        **changes,
    }
    return raw


def test_cli_study_compresses_the_base_and_resumes_without_retraining(tmp_path, capsys):
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path)))
    assert main(["run", str(path), "--no-progress"]) == 0
    assert "Pareto front of tiny_prune" in capsys.readouterr().out

    config = load_config(path)
    run_dir = config.run_dir
    base_file = run_dir / "base.pt"
    stamp = base_file.stat().st_mtime_ns
    study = optuna.load_study(study_name="tiny_prune", storage=f"sqlite:///{run_dir / 'study.db'}")
    base = study.user_attrs["base"]
    assert {"accuracy", "latency_ms", "params", "flops", "macs", "sha256"} <= set(base)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    space = build_context(config).space
    for t in done:
        candidate = t.user_attrs["candidate"]
        assert t.user_attrs["params"] < base["params"] and t.user_attrs["macs"] < base["macs"]
        assert t.user_attrs["latency"]["precision"] == candidate["precision"] != "fp32"
        assert 0 <= t.user_attrs["accuracy_adaptive_bn"] <= 1 and 0 <= t.user_attrs["accuracy_fp32"] <= 1
        vs = t.user_attrs["vs_base"]
        assert vs["compression"] == pytest.approx(base["params"] / t.user_attrs["params"])
        paired = t.user_attrs["latency"]["extra"]["interleaved"]  # timed against the base in the same rounds
        assert vs["speedup"] == paired["speedup"] and vs["speedup_low"] <= vs["speedup"] <= vs["speedup_high"]
        assert paired["rounds"] == 5 and paired["runs"] >= 10
        assert vs["accuracy_change"] == pytest.approx(t.values[0] - base["accuracy"])
        assert 0 < vs["flops_reduction"] < 1
        rebuilt = space.build(candidate)
        assert sum(p.numel() for p in rebuilt.parameters()) == t.user_attrs["params"]
    assert any(t.user_attrs["candidate"]["rank"] for t in done)

    assert main(["run", str(path), "--trials", "4", "--no-progress"]) == 0
    study = optuna.load_study(study_name="tiny_prune", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert base_file.stat().st_mtime_ns == stamp and study.user_attrs["base"] == base

    assert main(["status", str(run_dir)]) == 0
    assert "speedup" in capsys.readouterr().out

    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--pick", "knee", "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["accuracy"]["matches_search"], "export scores a compressed candidate exactly as the study did"
    assert card["accuracy"]["precision"] == card["candidate"]["precision"] == card["latency"]["precision"]
    assert card["versus_base"]["base"]["params"] == base["params"]
    assert card["versus_base"]["compression"] == pytest.approx(base["params"] / card["cost"]["params"])
    assert (out / card["onnx"]["at_precision"]).stat().st_size > 0


@pytest.mark.parametrize("model, size, message", [
    ("torchvision:resnet_18", 8, "did you mean resnet18"),
    ("torchvision:vit_b_16", 8, "Input shape indivisible by patch size"),
    ("torchvision:vit_b_32", 32, "(MultiheadAttention): attention layers are not supported"),
])
def test_bad_base_is_a_usage_error_before_any_training(tmp_path, capsys, model, size, message):
    raw = recipe(tmp_path)
    raw["space"]["base"].update(model=model, kwargs={})
    raw["data"]["image_size"] = size
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "space.base" in err and message in err
    assert not (tmp_path / "runs" / "tiny_prune" / "base.pt").exists()


def test_same_recipe_trains_the_same_base(tmp_path):
    prints = []
    for name in ("first", "second"):
        config = validate_config(recipe(tmp_path, name=name))
        base = prepare_base(config, recipe_data(config))
        assert base.checkpoint == config.run_dir / "base.pt" and base.checkpoint.is_file()
        prints.append(fingerprint(base.model))
    assert prints[0] == prints[1]


def test_a_compression_study_evaluates_uniform_anchor_policies_first_and_once(tmp_path):
    config = validate_config(recipe(tmp_path, search={"sampler": "random", "trials": 8, "anchors": 2}), "test")
    study = run_study(config, show_progress=False)
    anchors = sorted((t for t in study.trials if t.user_attrs.get("anchor")), key=lambda t: t.number)
    assert [t.number for t in anchors] == [0, 1, 2, 3]  # keep [0.2, 0.8] by 0.2: ratios 0.6 and 0.4, per precision
    policies = [(set(t.user_attrs["candidate"]["keep"].values()), t.user_attrs["candidate"]["precision"])
                for t in anchors]
    assert policies == [({0.6}, "fp16"), ({0.4}, "fp16"), ({0.6}, "int8"), ({0.4}, "int8")]
    assert len(study.trials) == 8
    for t in anchors:
        assert t.state == TrialState.COMPLETE
        assert t.user_attrs["candidate"]["rank"] == {} and t.user_attrs["candidate"]["importance"] == "l1"
    study = run_study(config, trials=9, show_progress=False)
    assert sum(bool(t.user_attrs.get("anchor")) for t in study.trials) == 4  # a resume queues none again


@pytest.mark.parametrize("anchors", [0, 3])  # none asked for; more than half the budget
def test_without_anchors_every_trial_is_sampled(tmp_path, anchors):
    config = validate_config(recipe(tmp_path, search={"sampler": "random", "trials": 2, "anchors": anchors}), "test")
    study = run_study(config, show_progress=False)
    assert len(study.trials) == 2 and not any(t.user_attrs.get("anchor") for t in study.trials)


def test_anchors_are_judged_against_the_runs_own_trial_budget(tmp_path):
    """`--trials 2` on a recipe of 8: four anchors would be more than half of this run, so none are queued
    (none left waiting either)."""
    config = validate_config(recipe(tmp_path, search={"sampler": "random", "trials": 8, "anchors": 2}), "test")
    study = run_study(config, trials=2, show_progress=False)
    assert len(study.trials) == 2 and not any(t.user_attrs.get("anchor") for t in study.trials)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
