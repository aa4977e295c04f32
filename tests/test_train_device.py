"""Where fine-tunes run: `train.device` (auto is the CUDA GPU where torch sees one, else the CPU)."""

from __future__ import annotations

import pytest
import torch
import yaml
from optuna.trial import TrialState

from evaluators.splits import load_data
from evaluators.train import TrainSettings, train_model
from search.cli import main
from search.errors import ConfigError
from search.recipe.config import load_config
from search.study.executors.inprocess import run_study
from spaces.compress.nets import tiny_resnet

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")


@pytest.mark.skipif(HAS_GPU, reason="a CUDA GPU is present")
def test_a_gpu_asked_for_where_there_is_none_is_refused_before_any_trial(recipe_file, capsys):
    recipe = recipe_file(**{"train.device": "cuda"})
    assert main(["run", str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.device=cuda" in err and "set train.device=auto or cpu" in err and "Traceback" not in err


def test_the_device_may_change_on_resume_and_the_frozen_recipe_records_it(recipe_file):
    recipe = recipe_file(**{"search.trials": 1, "train.device": "cpu"})
    assert main(["run", str(recipe), "--no-progress"]) == 0
    config = load_config(recipe, ["train.device=auto", "search.trials=2"])
    study = run_study(config, show_progress=False)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert yaml.safe_load((config.run_dir / "config.yaml").read_text())["train"]["device"] == "auto"
    with pytest.raises(ConfigError, match="train.epochs"):
        run_study(load_config(recipe, ["train.epochs=1"]), show_progress=False)


@needs_gpu
def test_a_fine_tune_on_the_gpu_learns_and_hands_the_model_back_on_the_cpu():
    data = load_data("digits", image_size=8)
    torch.manual_seed(0)
    model, teacher = tiny_resnet(10, 1, widths=(8, 16, 32)), tiny_resnet(10, 1, widths=(8, 16, 32))
    torch.cuda.reset_peak_memory_stats()
    result = train_model(model, data, TrainSettings(epochs=2, device="cuda", kd_alpha=0.5), teacher=teacher)
    assert torch.cuda.max_memory_allocated() > 0
    assert result.accuracy > 0.5
    for net in (model, teacher):
        assert all(p.device.type == "cpu" for p in net.parameters())


@needs_gpu
def test_a_study_fine_tunes_on_the_gpu_by_default(recipe_file):
    config = load_config(recipe_file(**{"search.trials": 2}))
    torch.cuda.reset_peak_memory_stats()
    study = run_study(config, show_progress=False)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert torch.cuda.max_memory_allocated() > 0
