"""The compress space: physical channel pruning, low-rank factorization, importance criteria, candidates."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from evaluators.train import evaluate, recalibrate_bn
from spaces import RandomSuggest
from spaces.compress import (
    CompressError,
    CompressSpace,
    CompressSpaceConfig,
    build_model,
    compress,
    load_checkpoint,
    prunable_groups,
)
from spaces.compress.graph import collect_group
from spaces.compress.importance import make_importance
from spaces.compress.lowrank import factorize_conv, factorize_layers, factorize_linear
from spaces.compress.nets import tiny_resnet
from spaces.compress.prune import ChannelGraph, kept_channels
from spaces.compress.shuffle import expose_channel_shuffles
from spaces.layers import ChannelShuffle
from tests.conftest import trained_tiny_resnet


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear layer, by name."""
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.fixture(scope="module")
def trained(digits):
    """A tiny ResNet trained for one epoch on 8×8 digits."""
    return trained_tiny_resnet(digits, (16, 32, 32))


def test_pruning_shrinks_params_with_channels_in_multiples_of_8():
    model = build_model("torchvision:resnet18", in_channels=3, num_classes=10, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    small = compress(model, x, keep=0.5)
    assert params(small) < 0.4 * params(model)
    before, after = widths(model), widths(small)
    changed = {n: w for n, w in after.items() if w != before[n]}
    assert changed and all(w % 8 == 0 and w < before[n] for n, w in changed.items())
    assert after["fc"] == 10 and small(x).shape == (2, 10)
    assert params(compress(model, x, keep=1.0)) == params(model)


@pytest.mark.parametrize("channels, groups, keep, want", [
    (64, 1, 0.5, 32), (64, 1, 0.2, 16), (64, 1, 0.01, 8), (20, 1, 1.0, 20), (20, 1, 0.95, 16), (6, 1, 0.5, 6),
    (128, 32, 0.5, 64), (48, 6, 0.5, 24),
])
def test_kept_channels_rounds_to_multiples(channels, groups, keep, want):
    assert kept_channels(channels, groups, keep, 8) == want


def zero_consumers_then_prune(model: nn.Module, x: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of the model with the inputs of every pruned channel zeroed at its consumers, output after
    pruning those channels): equal exactly when pruning removed the same channels on every side."""
    net = expose_channel_shuffles(copy.deepcopy(model).eval(), x)
    graph = ChannelGraph(net, x)
    plans = graph.plan({g.name: keep for g in graph.groups}, make_importance("l1", net), 8)
    assert plans
    consumers = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
    with torch.no_grad():
        for _, root, handler, idxs in plans:
            for dep, ids in collect_group(graph.graph, root, handler, idxs)[0]:
                module = dep.target.module
                if dep.handler not in consumers:
                    continue
                groups = getattr(module, "groups", 1)  # a grouped conv reads input c at column c % (in / groups)
                per_in, per_out = module.weight.shape[1], module.weight.shape[0] // groups
                for c in ids:
                    module.weight[c // per_in * per_out:(c // per_in + 1) * per_out, c % per_in] = 0
        reference = net(x)
        graph.apply(plans)
        return reference, net(x)


@pytest.mark.parametrize("name", [
    "torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:shufflenet_v2_x0_5",
    "torchvision:googlenet", "timm:ghostnet_100", "timm:skresnet18",
    pytest.param("timm:resnest14d", marks=pytest.mark.slow), pytest.param("timm:dpn68", marks=pytest.mark.slow),
])
def test_pruned_network_equals_the_original_with_those_channels_silenced(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10, image_size=64).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so a misplaced channel shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    reference, pruned = zero_consumers_then_prune(model, torch.randn(2, 3, 64, 64), keep=0.5)
    assert torch.allclose(reference, pruned, rtol=1e-4, atol=1e-5 * reference.abs().max().item())


def test_shufflenet_channel_shuffle_becomes_a_module_and_is_kept_whole():
    model = build_model("torchvision:shufflenet_v2_x0_5", in_channels=3, num_classes=10, image_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    exposed = expose_channel_shuffles(model, x)
    assert sum(isinstance(m, ChannelShuffle) for m in exposed.modules()) == 16
    with torch.no_grad():
        assert torch.equal(exposed(x), model(x))
    graph = ChannelGraph(exposed, x)
    assert any("channel shuffle" in why for why in graph.kept_whole.values())
    inner = [g for g in graph.groups if ".branch2.0" in g.name]
    assert inner, "the channels inside each branch stay prunable"


def test_importance_criteria_rank_channels_differently(trained, digits):
    x, y = next(digits.train.batches(64))
    model = copy.deepcopy(trained)
    for m in model.modules():  # slimming-style scales that disagree with the weight norms
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=torch.Generator().manual_seed(m.num_features))
    dropped = {}
    for criterion in ("l1", "bn_scale", "taylor"):
        net = copy.deepcopy(model)
        graph = ChannelGraph(net, x[:1])
        plans = graph.plan({g.name: 0.5 for g in graph.groups}, make_importance(criterion, net, (x, y)), 8)
        dropped[criterion] = {info.name: tuple(idxs) for info, _, _, idxs in plans}
    assert dropped["l1"] != dropped["bn_scale"] != dropped["taylor"] != dropped["l1"]
    with pytest.raises(CompressError, match="calibration"):
        make_importance("taylor", model)


def test_svd_of_linear_and_pointwise_conv_is_exact_at_full_rank_and_smaller_at_low_rank():
    torch.manual_seed(0)
    linear = nn.Linear(48, 32)
    x = torch.randn(5, 48)
    assert torch.allclose(factorize_linear(linear, 32)(x), linear(x), atol=1e-5)
    low = factorize_linear(linear, 8)
    assert params(low) < params(linear)
    conv = nn.Conv2d(24, 40, 1, stride=2)
    x = torch.randn(2, 24, 9, 9)
    assert torch.allclose(factorize_conv(conv, 24)(x), conv(x), atol=1e-5)
    assert params(factorize_conv(conv, 8)) < params(conv)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_spatial_svd_turns_kxk_into_kx1_then_1xk(stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=stride, padding=padding, dilation=dilation, bias=False)
    x = torch.randn(2, 8, 11, 11)
    full = factorize_conv(conv, 24)
    assert full[0].kernel_size == (3, 1) and full[1].kernel_size == (1, 3)
    assert full[0].out_channels == 24 and full[1].in_channels == 24
    assert torch.allclose(full(x), conv(x), atol=1e-5)
    low = factorize_conv(conv, 8)
    assert low(x).shape == conv(x).shape and params(low) < params(conv)


def test_factorization_only_where_it_saves_params():
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Linear(64, 64), nn.Linear(64, 4))
    done = factorize_layers(model, {"0": 0.5, "1": 0.25, "2": 0.5}, round_to=8)
    assert done == ["1"] and isinstance(model[1], nn.Sequential) and isinstance(model[2], nn.Linear)
    with pytest.raises(CompressError, match="no layer named 'nope'"):
        factorize_layers(model, {"nope": 0.5})


def test_compress_refuses_clearly():
    model = build_model("torchvision:vit_b_32", in_channels=3, num_classes=10, image_size=64)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(CompressError, match=r"cannot prune layer '\w+"):
        compress(model, x, keep=0.5)
    mlp = "encoder.layers.encoder_layer_0.mlp.0"  # low-rank factorization still applies to its MLPs
    factorized = compress(model, x, rank={mlp: 0.25})
    assert isinstance(factorized.get_submodule(mlp), nn.Sequential) and params(factorized) < params(model)
    assert factorized(x).shape == (1, 10)

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.aux = nn.Conv2d(3, 16, 3), nn.Linear(16, 10)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).mean((2, 3)))

    class Functional(Unused):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.body(x).mean((2, 3))
            return self.head(features) + F.linear(features, self.aux.weight)

    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CompressError, match="layer 'aux'.*never calls it, yet the network needs it"):
        compress(Functional(), x, keep=0.5)
    assert compress(Unused(), x, keep=0.5).aux is None
    with pytest.raises(CompressError, match="unknown group"):
        compress(tiny_resnet(), torch.randn(1, 1, 8, 8), keep={"nope": 0.5})


def space_config(**changes: object) -> CompressSpaceConfig:
    base = {"model": "spaces.compress.nets:tiny_resnet", "kwargs": {"widths": [16, 32, 32]}}
    raw = {"type": "compress", "base": base,
           "keep": [0.2, 0.9], "rank": [0.25, 1.0], "rank_step": 0.25, "importance": ["l1", "bn_scale", "taylor"],
           "precision": ["fp32", "int8"], **changes}
    return CompressSpaceConfig.model_validate(raw)


def test_candidates_are_json_and_rebuild_the_same_network(trained, digits, tmp_path):
    calibration = next(digits.train.batches(64))
    space = CompressSpace(space_config(), in_channels=1, num_classes=10, image_size=8, base=trained,
                          calibration=calibration)
    names = [g.name for g in space.groups]
    assert names == [g.name for g in prunable_groups(trained, torch.zeros(1, 1, 8, 8))] and "fc" not in names
    checkpoint = tmp_path / "base.pt"
    torch.save(trained.state_dict(), checkpoint)
    for seed in range(4):
        candidate = json.loads(json.dumps(space.sample(RandomSuggest(seed))))
        assert set(candidate["keep"]) == set(names)
        a, b = space.build(candidate), space.build(candidate)
        assert params(a) < params(trained)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        if candidate["importance"] != "taylor":  # a space rebuilt from the checkpoint alone (no calibration batch)
            again = CompressSpace(space_config(), in_channels=1, num_classes=10, image_size=8,
                                  checkpoint=checkpoint).build(candidate)
            assert all(torch.equal(sa[k], again.state_dict()[k]) for k in sa)


@pytest.mark.parametrize("granularity, keys", [("stage", {"keep.stage.8x8", "keep.stage.4x4", "keep.stage.2x2"}),
                                               ("global", {"keep.all"})])
def test_granularity_shares_keep_ratios(trained, granularity, keys):
    space = CompressSpace(space_config(granularity=granularity, rank=None), in_channels=1, num_classes=10,
                          image_size=8, base=trained)
    suggest = RandomSuggest(0)
    candidate = space.sample(suggest)
    assert {k for k in suggest.values if k.startswith("keep")} == keys
    assert not candidate["rank"]
    if granularity == "global":
        assert len(set(candidate["keep"].values())) == 1


def test_candidate_of_another_base_is_refused(trained):
    space = CompressSpace(space_config(), in_channels=1, num_classes=10, image_size=8, base=trained)
    candidate = space.sample(RandomSuggest(0))
    candidate["base"]["sha256"] = "0" * 64
    with pytest.raises(CompressError, match="different|made from"):
        space.build(candidate)


def test_space_config_errors_name_the_field():
    with pytest.raises(ValueError, match="keep"):
        space_config(keep=[0.0, 1.0])
    with pytest.raises(ValueError, match="multiple of its step"):
        space_config(keep=[0.2, 0.93])
    with pytest.raises(ValueError, match="importance"):
        space_config(importance=["l2"])


def test_recalibrate_bn_restores_corrupted_statistics(trained, digits):
    model = copy.deepcopy(trained)
    good = evaluate(model, digits.val)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean += 3.0
            m.running_var *= 10.0
    assert evaluate(model, digits.val) < good - 0.2
    assert recalibrate_bn(model, digits.train, batches=10, batch_size=64) == 640
    assert evaluate(model, digits.val) >= good - 0.05
    assert not model.training


@pytest.mark.parametrize("content", ["damaged", "whole model"])
def test_an_unreadable_checkpoint_names_the_file_and_the_fix(tmp_path, content):
    path = tmp_path / "base.pt"
    if content == "damaged":
        path.write_bytes(b"not a zip archive")
    else:
        torch.save(nn.Linear(2, 2), path)
    with pytest.raises(CompressError, match=r"base\.pt: not a readable state dict .* torch\.save\(model\.state_dict\(\)"):
        load_checkpoint(nn.Linear(2, 2), path)


def test_layers_the_eval_forward_never_calls_are_removed_and_the_rest_is_pruned(tmp_path):
    model = build_model("torchvision:googlenet", in_channels=3, num_classes=10, image_size=32,
                        kwargs={"aux_logits": True}).eval()
    x = torch.randn(2, 3, 32, 32)
    small = compress(model, x, keep=0.5)
    assert small.aux1 is None and small.aux2 is None and model.aux1 is not None
    assert params(small) < 0.4 * params(model)
    with torch.no_grad():
        assert small(x).shape == (2, 10)


class ConcatThenDepthwise(nn.Module):
    """Two convs concatenated into one depthwise conv: one group, whose channels come from two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dw(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


def test_every_layer_of_a_group_keeps_at_least_round_to_of_its_channels():
    model = ConcatThenDepthwise().eval()
    with torch.no_grad():
        model.a.weight.mul_(1e-3)  # all of a's channels rank below all of b's
    x = torch.randn(2, 3, 8, 8)
    small = compress(model, x, keep=0.5)
    assert (small.a.out_channels, small.b.out_channels, small.dw.out_channels) == (8, 8, 16)
    assert small(x).shape == (2, 10)
