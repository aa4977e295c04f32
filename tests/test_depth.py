"""Depth pruning: residual blocks found in traced models, removed whole, ranked, sampled and exported."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torchvision
import yaml
from optuna.trial import FixedTrial, TrialState

from evaluators.to_onnx import export_onnx
from search.cli import main
from search.recipe.config import load_config
from search.results.front import front_trials
from search.results.record import TrialRecord
from search.study.executors.inprocess import run_study
from search.trial.suggest import OptunaSuggest
from spaces import RandomSuggest
from spaces.compress import CompressError, CompressSpace, CompressSpaceConfig, compress
from spaces.compress.depth import adds_its_input, removal_losses, residual_blocks
from spaces.compress.nets import resnet56, tiny_resnet
from spaces.compress.units import layer_geometry, policy_units
from tests.conftest import trained_tiny_resnet
from tests.test_staircase import recipe


@pytest.fixture(scope="module")
def trained(digits):
    """A tiny ResNet with three blocks per stage trained for one epoch on 8×8 digits."""
    return trained_tiny_resnet(digits, (16, 32), depth=3)


def test_resnet56_has_every_block_but_the_two_with_projection_shortcuts():
    blocks = residual_blocks(resnet56(), torch.zeros(1, 3, 32, 32))
    names = [b.name for b in blocks]
    assert len(names) == 25 and "stages.1.0" not in names and "stages.2.0" not in names
    assert names[0] == "stages.0.0" and names[-1] == "stages.2.8"  # forward order
    assert {b.stage for b in blocks} == {"32x32", "16x16", "8x8"}
    assert blocks[0].layers == ("stages.0.0.conv1", "stages.0.0.conv2")


@pytest.mark.parametrize("make, count", [
    (lambda: torchvision.models.resnet18(), 5),  # layer1.0/1, layer2.1, layer3.1, layer4.1
    (lambda: torchvision.models.resnet50(), 12),  # 3+4+6+3 bottlenecks less the 4 with downsample
    (lambda: torchvision.models.mobilenet_v2(), 10),  # inverted residuals with use_res_connect
])
def test_torchvision_blocks_with_identity_shortcuts_are_found(make, count):
    model = make().eval()
    blocks = residual_blocks(model, torch.zeros(1, 3, 64, 64))
    assert len(blocks) == count
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pruned = compress(model, x, drop=[blocks[-1].name])
        assert pruned(x).shape == model(x).shape
    assert isinstance(pruned.get_submodule(blocks[-1].name), nn.Identity)


def test_a_module_that_does_not_add_its_input_is_not_a_block():
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + self.conv(x)  # same shape, but no shortcut

    assert not adds_its_input(Doubled())
    assert not adds_its_input(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()))
    assert adds_its_input(torchvision.models.resnet.BasicBlock(4, 4))


def test_dropping_a_block_that_is_not_removable_is_refused():
    model = resnet56().eval()
    with pytest.raises(CompressError, match="stages.1.0.*no removable residual block"):
        compress(model, torch.zeros(1, 3, 32, 32), drop=["stages.1.0"])


def test_a_block_whose_branch_gives_zero_is_removed_exactly():
    model = resnet56().eval()  # zero-initialized last BatchNorm: every block starts as the identity
    x = torch.rand(2, 3, 32, 32)
    names = [b.name for b in residual_blocks(model, x[:1])][::3]
    with torch.no_grad():
        assert torch.allclose(compress(model, x[:1], drop=names)(x), model(x), atol=1e-5)


def test_removal_losses_rank_the_blocks_on_the_calibration_batch(trained, digits):
    blocks = residual_blocks(trained, torch.zeros(1, 1, 8, 8))
    losses = removal_losses(trained, blocks, next(digits.train.batches(128)))
    assert set(losses) == {b.name for b in blocks} and all(v >= 0 for v in losses.values())
    assert max(losses.values()) > 0  # a trained block carries signal


def test_depth_and_width_candidates_sample_build_and_export(trained, digits, tmp_path):
    config = CompressSpaceConfig(base={"model": "spaces.compress.nets:tiny_resnet"}, keep=(0.5, 1.0),
                                 granularity="stage", drop=(0.0, 1.0), round_to=4)
    calibration = next(digits.train.batches(128))
    space = CompressSpace(config, in_channels=1, num_classes=10, image_size=8, base=trained, calibration=calibration)
    assert [b.name for b in space.depth.blocks] == ["stages.0.0", "stages.0.1", "stages.0.2", "stages.1.1",
                                                     "stages.1.2"]
    losses = space.depth.losses()
    seen = set()
    for seed in range(12):
        suggest = RandomSuggest(seed)
        candidate = json.loads(json.dumps(space.sample(suggest)))
        dropped = candidate["drop"]
        seen.add(len(dropped))
        for stage in ("8x8", "4x4"):  # the least important blocks of a stage go first
            members = [b.name for b in space.depth.blocks if b.stage == stage]
            gone = [b for b in dropped if b in members]
            assert len(gone) == suggest.values[f"drop.{stage}"]
            assert all(losses[g] <= losses[k] for g in gone for k in members if k not in gone)
        net = space.build(candidate)
        for name in dropped:
            assert isinstance(net.get_submodule(name), nn.Identity)
        convs = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        units = space.units(candidate)
        assert len(units) == len(convs)  # the units are the layers left
        assert (f"drop {len(dropped)} blocks" in space.describe(candidate)) == bool(dropped)
        if seed < 2:
            path = export_onnx(net, (1, 8, 8), tmp_path / f"{seed}.onnx", batch_size=4)
            x = torch.randn(4, 1, 8, 8)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {"input": x.numpy()})[0]
            with torch.no_grad():
                np.testing.assert_allclose(got, net(x).numpy(), atol=1e-4)
    assert len(seen) > 1
    assert space.reference_candidate()["drop"] == []


def test_units_of_dropped_blocks_are_left_out():
    model = tiny_resnet(10, 1, (16, 32), depth=3).eval()
    x = torch.zeros(1, 1, 8, 8)
    layers = layer_geometry(model, x)
    gone = set(residual_blocks(model, x)[1].layers)
    kept = [layer for layer in layers if layer.name not in gone]
    assert len(policy_units(kept, {})) == len(layers) - 2


def fixed_cost_predictor(units: list[dict]) -> float:
    """A latency model in the manner of batch-1 CPU inference: a fixed cost per layer plus its MACs."""
    return sum(20.0 + 1e-3 * u["in_channels"] * u["out_channels"] * u["out_resolution"] ** 2 for u in units)


def test_greedy_walks_depth_and_width_and_greedy_local_searches_around_it(trained, digits):
    config = CompressSpaceConfig(base={"model": "spaces.compress.nets:tiny_resnet"}, keep=(0.25, 1.0), keep_step=0.25,
                                 drop=(0.0, 1.0), round_to=4, policy=["latency_greedy", "greedy_local"],
                                 greedy_speedup=(1.2, 2.5))
    space = CompressSpace(config, in_channels=1, num_classes=10, image_size=8, base=trained,
                          calibration=next(digits.train.batches(128)))
    space.use_staircase(space.width_choices(), fixed_cost_predictor)
    base_ms = space.predicted_base_latency()
    widths, dropped = space.greedy_policy(2.0)
    assert dropped and space.predicted_latency(widths, dropped) <= base_ms / 2.0  # fixed costs: blocks go
    greedy = {"policy": "latency_greedy", "greedy.speedup": 2.0}
    made = set()
    for seed in range(6):
        local = space.sample(OptunaSuggest(FixedTrial({"policy": "greedy_local", "greedy.speedup": 2.0, "local.moves": 3,
                                           "local.seed": seed})))
        w = {g.name: round(g.channels * local["keep"][g.name]) for g in space.groups}
        assert space.predicted_latency(w, local["drop"]) <= base_ms / 2.0 * 1.0001  # walked back to the target
        assert "±3" in space.describe(local) and local["local"] == {"moves": 3, "seed": seed}
        made.add(json.dumps([local["keep"], local["drop"]], sort_keys=True))
        assert len(space.build(local)(torch.zeros(2, 1, 8, 8))) == 2
    anchor = space.sample(OptunaSuggest(FixedTrial(greedy)))
    assert len(made - {json.dumps([anchor["keep"], anchor["drop"]], sort_keys=True)}) >= 2  # not the greedy again


def test_a_depth_study_runs_and_its_export_card_names_the_blocks_it_lost(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))
    raw = recipe(tmp_path, space={
        "type": "compress",
        "base": {"model": "spaces.compress.nets:tiny_resnet", "kwargs": {"widths": [16, 32], "depth": 2},
                 "epochs": 1},
        "keep": [0.5, 1.0], "keep_step": 0.25, "round_to": 4, "drop": [0.5, 1.0],
        "policy": ["group", "latency_greedy", "greedy_local"], "greedy_speedup": [1.1, 1.6], "greedy_anchors": [1.3],
    }, name="tiny_depth", search={"sampler": "random", "trials": 6, "anchors": 1})
    path = tmp_path / "depth.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    study = run_study(config, show_progress=False)
    done = [TrialRecord.of(t) for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert len(done) == 6 and {r.candidate["policy"] for r in done} >= {"group", "latency_greedy"}
    for r in done:
        if r.candidate["policy"] == "group":  # half of each stage's blocks at least: 1–2 of 2, then 1 of 1
            assert len(r.candidate["drop"]) >= 2, r.candidate
    with_drop = [t for t in front_trials(study) if TrialRecord.of(t).candidate["drop"]]
    assert with_drop, "no network on the front lost a block"
    out = tmp_path / "export"
    assert main(["export", str(config.run_dir), "--trial", str(with_drop[0].number), "--out", str(out)]) == 0
    card = (out / "card.md").read_text()
    dropped = TrialRecord.of(with_drop[0]).candidate["drop"]
    assert f"| blocks removed | {len(dropped)}, each replaced by the identity: `{dropped[0]}`" in card
    assert json.loads((out / "card.json").read_text())["onnx"]["matches"] is True
