"""Shared fixtures: a tiny but real digits study in a temporary run directory, and 8×8 digits with a tiny ResNet
trained on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The tests' networks are tiny: a second torch thread only adds synchronisation (several times slower on a busy
# two-core machine). Test recipes train with one, and so does code a test calls directly.
ONE_THREAD = 1


@pytest.fixture(autouse=True)
def one_torch_thread():
    torch.set_num_threads(ONE_THREAD)


@pytest.fixture(scope="session")
def digits():
    """The digits set at 8×8."""
    from evaluators.splits import load_data

    return load_data("digits", image_size=8)


def trained_tiny_resnet(data: object, widths: tuple[int, ...], depth: int = 1) -> torch.nn.Module:
    """A tiny ResNet trained for one epoch on `data` (seeded): a base whose channels and blocks differ in worth."""
    from evaluators.train import TrainSettings, train_model
    from spaces.compress.nets import tiny_resnet

    torch.manual_seed(0)
    model = tiny_resnet(num_classes=10, in_channels=1, widths=widths, depth=depth)
    train_model(model, data, TrainSettings(epochs=1, lr=0.1))
    return model.eval()


def tiny_recipe(tmp_path: Path, **changes: object) -> dict:
    """The default digits recipe shrunk so a trial takes about a second."""
    raw = yaml.safe_load((ROOT / "studies" / "digits_blocks.yaml").read_text())
    raw["output_dir"] = str(tmp_path / "runs")
    raw["data"]["image_size"] = 8
    raw["train"]["epochs"] = 0.5
    raw["train"]["threads"] = ONE_THREAD
    raw["latency"]["max_seconds"] = 0.2
    raw["search"]["trials"] = 3
    raw["search"]["startup_trials"] = 2
    return set_dotted(raw, changes)


def tiny_study(tmp_path: Path, **changes: object) -> tuple:
    """A tiny digits study (`tiny_recipe` with `changes`) written to `tmp_path`, run to its end: (config, study)."""
    from search.recipe.config import load_config
    from search.study.executors.inprocess import run_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, **changes)))
    config = load_config(path)
    return config, run_study(config, show_progress=False)


def set_dotted(raw: dict, changes: dict) -> dict:
    """`raw` with each dotted key of `changes` (`train.epochs`) set, missing mappings made on the way."""
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


@pytest.fixture
def recipe_file(tmp_path: Path):
    """Write a tiny recipe (with optional dotted-key changes) and return its path."""

    def make(**changes: object) -> Path:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, **changes)))
        return path

    return make
