"""Recipes: valid ones load; wrong keys, types and ranges give one clear message and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from search.cli import main
from search.errors import ConfigError
from search.recipe.config import load_config
from tests.conftest import ROOT


def test_default_recipe_validates():
    config = load_config(ROOT / "studies" / "digits_blocks.yaml")
    assert config.name == "digits_blocks"
    assert config.space.type == "blocks"
    assert config.run_dir.name == "digits_blocks"


def test_set_overrides_nested_keys(recipe_file):
    config = load_config(recipe_file(), ["name=trial-run", "search.trials=7", "search.sampler=nsga2"])
    assert (config.name, config.search.trials, config.search.sampler) == ("trial-run", 7, "nsga2")


@pytest.mark.parametrize(
    "changes, field, expected",
    [
        ({"search.trails": 5}, "search.trails", "unknown key"),
        ({"search.trials": "many"}, "search.trials", "valid integer"),
        ({"search.trials": 0}, "search.trials", "greater than or equal to 1"),
        ({"search.sampler": "grid"}, "search.sampler", "'tpe', 'gp', 'nsga2' or 'random'"),
        ({"space.blocks": ["conv", "nope"]}, "space.blocks", "unknown block"),
        ({"space.stem_width": [12, 24]}, "space", "multiple of round_to"),
        ({"data.dataset": "imagenet"}, "data.dataset", "unknown dataset"),
        ({"space.type": "galaxy"}, "space.type", "unknown space"),
        ({"space.stem_width": [24, 8]}, "space.stem_width", "1 <= low <= high"),
        ({"latency.backend": "onnx"}, "latency.backend", "unknown latency backend 'onnx'; known latency backends: onnxruntime"),
    ],
)
def test_bad_recipe_names_the_field(recipe_file, changes, field, expected):
    with pytest.raises(ConfigError) as err:
        load_config(recipe_file(**changes))
    message = str(err.value)
    assert f"{field}" in message and expected in message


def test_validate_cli_exit_code_2_without_traceback(recipe_file, capsys):
    assert main(["validate", str(recipe_file(**{"train.lr": -1}))]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "greater than 0" in err and "Traceback" not in err


def test_validate_cli_ok(recipe_file, capsys):
    assert main(["validate", str(recipe_file())]) == 0
    assert "valid 'blocks' study" in capsys.readouterr().out


def test_missing_recipe_file_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "validate", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "no such recipe file" in proc.stderr and "Traceback" not in proc.stderr


def test_set_indexes_lists_and_refuses_what_it_cannot_place(recipe_file):
    recipe = recipe_file()
    config = load_config(recipe, ["space.stages.1.width=[8, 16]"])
    assert config.space.stages[1].width == (8, 16)
    assert config.space.stages[0] == load_config(recipe).space.stages[0]
    with pytest.raises(ConfigError, match=r"space.stages is a list of \d+; index it with 0\.\.\d+"):
        load_config(recipe, ["space.stages.9.width=[8, 16]"])
    with pytest.raises(ConfigError, match="the value is not valid YAML"):
        load_config(recipe, ["space.blocks=[conv"])


def test_messages_with_brackets_print_as_written(recipe_file, capsys):
    assert main(["validate", str(recipe_file(**{"space.stem_width": [24, 8]}))]) == 2
    err = capsys.readouterr().err
    assert "expected [low, high] with 1 <= low <= high <= 4096, got [24, 8]" in err
    assert "(got" not in err  # the value is said once


def test_a_file_that_is_not_text_is_not_a_recipe(tmp_path, capsys):
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)))
    assert main(["validate", str(binary)]) == 2
    assert "not a YAML recipe (it is not text)" in capsys.readouterr().err
