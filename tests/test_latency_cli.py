"""`slimsearch latency` on an ONNX file and on a recipe: real measurements, JSON or a table, clear refusals;
and a study that refuses to resume on another backend."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from evaluators.latency import get_backend
from evaluators.to_onnx import export_onnx
from search.cli import main
from search.errors import UsageError
from search.recipe.config import load_config
from search.study.executors.inprocess import run_study
from search.study.storage import check_backend


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


def test_latency_of_an_onnx_file_as_json(tmp_path, capsys):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx")
    assert main(["latency", str(path), "--backend", "onnxruntime", "--max-seconds", "0.2", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["model"] == str(path) and row["backend"] == "onnxruntime" and row["precision"] == "fp32"
    assert row["batch_size"] == 1 and row["runs"] >= 30 and 0 < row["median_ms"] <= row["p99_ms"]


def test_latency_of_a_dynamic_batch_onnx_needs_no_shape_but_takes_a_batch(tmp_path, capsys):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx", dynamic_batch=True)
    assert main(["latency", str(path), "--batch-size", "4", "--max-seconds", "0.2", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["batch_size"] == 4 and row["median_ms"] > 0


def test_latency_of_an_onnx_file_at_int8_prints_a_table(tmp_path, capsys):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx")
    assert main(["latency", str(path), "--precision", "int8", "--backend", "onnxruntime", "--max-seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "int8" in out and "median ms" in out and "m.onnx" in out


def test_latency_of_recipe_candidates(recipe_file, capsys):
    recipe = recipe_file(**{"latency.max_seconds": 0.1})
    assert main(["latency", str(recipe), "--candidates", "2", "--seed", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"].split(":")[0] for r in rows] == ["seed 5", "seed 6"]
    assert all(r["median_ms"] > 0 and r["backend"] == "onnxruntime" for r in rows)


def test_latency_of_a_recipe_at_another_input_shape_and_batch(recipe_file, capsys):
    recipe = recipe_file(**{"latency.max_seconds": 0.1})
    args = ["latency", str(recipe), "--input-shape", "3,32,32", "--batch-size", "2", "--backend", "torch", "--json"]
    assert main(args) == 0
    [row] = json.loads(capsys.readouterr().out)
    device = "cuda: " if torch.cuda.is_available() else "cpu: "  # the torch backend's `auto` picks a GPU
    assert row["backend"] == "torch" and row["batch_size"] == 2 and row["device"].startswith(device)


def test_latency_of_a_trial_and_resume_with_another_backend_is_refused(recipe_file, capsys):
    recipe = recipe_file(**{"latency.max_seconds": 0.1, "train.max_train_samples": 64, "train.max_eval_samples": 64})
    study = run_study(load_config(recipe), trials=1, show_progress=False)
    assert study.user_attrs["latency_backend"]["backend"] == "onnxruntime"
    capsys.readouterr()
    assert main(["latency", str(recipe), "--trial", "0", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["model"].startswith("trial 0: stem") and row["median_ms"] > 0
    assert study.trials[0].user_attrs["latency"]["backend"] == row["backend"]
    assert main(["latency", str(recipe), "--trial", "99"]) == 2
    assert "no trial 99" in capsys.readouterr().err

    assert main(["run", str(recipe), "--set", "latency.backend=torch", "--no-progress"]) == 2
    assert "torch" in capsys.readouterr().err
    assert len(study.trials) == 1
    with pytest.raises(UsageError, match="measured latency with .*'onnxruntime'.*'torch'"):
        check_backend(study, get_backend("torch", device="cpu"), "fp32")


def test_latency_refuses_bad_input(tmp_path, capsys):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx")
    assert main(["latency", str(tmp_path / "missing.onnx")]) == 2
    assert main(["latency", str(path), "--input-shape", "3,16"]) == 2
    assert main(["latency", str(path), "--batch-size", "8"]) == 2
    assert main(["latency", str(path), "--backend", "warp-drive"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "expected C,H,W" in err and "does not fit batch 8" in err
    assert "unknown latency backend" in err
