"""Network Slimming: sparsity training (L1 on BatchNorm scales) and one global threshold across all groups."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from evaluators.splits import load_data
from evaluators.train import TrainSettings, add_bn_l1_subgradient, batchnorm_scales, train_model
from spaces import RandomSuggest
from spaces.compress import (
    CompressError,
    CompressSpace,
    CompressSpaceConfig,
    build_model,
    compress,
    global_keep_ratios,
    prunable_groups,
)
from spaces.compress.importance import make_importance
from spaces.compress.nets import tiny_resnet


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_bn_l1_adds_the_sign_of_each_scale_to_its_gradient():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4, affine=False), nn.Linear(4, 2))
    model[1].weight.data = torch.tensor([0.5, -2.0, 0.0, 3.0])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    add_bn_l1_subgradient(model, 0.1)
    assert torch.equal(model[1].weight.grad, torch.tensor([1.1, 0.9, 1.0, 1.1]))
    assert all(torch.equal(p.grad, torch.ones_like(p)) for n, p in model.named_parameters() if n != "1.weight")
    assert torch.equal(batchnorm_scales(model), torch.tensor([0.5, 2.0, 0.0, 3.0]))


def test_sparsity_training_shrinks_bn_scales_and_lambda_zero_trains_as_before():
    data = load_data("digits", image_size=8)
    runs = {}
    for name, settings in [("default", TrainSettings(epochs=2, lr=0.1)),
                           ("zero", TrainSettings(epochs=2, lr=0.1, bn_l1=0.0)),
                           ("sparse", TrainSettings(epochs=2, lr=0.1, bn_l1=0.05))]:
        torch.manual_seed(0)
        model = tiny_resnet(num_classes=10, in_channels=1, widths=(16, 32, 32))
        result = train_model(model, data, settings)
        runs[name] = (result, state(model), batchnorm_scales(model))
    default, zero, sparse = runs["default"], runs["zero"], runs["sparse"]
    assert zero[0].final_loss == default[0].final_loss and zero[0].accuracy == default[0].accuracy
    assert all(torch.equal(zero[1][k], default[1][k]) for k in default[1])
    assert not all(torch.equal(sparse[1][k], default[1][k]) for k in default[1])
    features = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert len(sparse[2]) == len(zero[2]) == features
    assert sparse[2].mean() < 0.8 * zero[2].mean()
    assert (sparse[2] < 0.5).float().mean() > (zero[2] < 0.5).float().mean() + 0.25


def slimmed(widths: tuple[int, ...] = (32, 64, 64), seed: int = 0) -> nn.Module:
    """A tiny ResNet whose BatchNorm scales look sparsity-trained: |N(0, 1)|, some layers much smaller."""
    torch.manual_seed(seed)
    model = tiny_resnet(num_classes=10, in_channels=1, widths=widths, depth=2).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for i, m in enumerate(norms):
        m.weight.data = torch.randn(m.num_features).abs() * (0.02 if i % 3 == 1 else 1.0)
    return model


def group_widths(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    return {g.name: g.channels for g in prunable_groups(model, x)}


def test_global_threshold_keeps_the_share_and_cuts_layers_by_different_amounts():
    model, x = slimmed(), torch.randn(2, 1, 16, 16)
    channels = group_widths(model, x)
    ratios = global_keep_ratios(model, x, 0.5, "bn_scale")
    assert set(ratios) == set(channels)
    kept = {name: round(ratio * channels[name]) for name, ratio in ratios.items()}
    assert all(k % 8 == 0 and 8 <= k <= channels[name] for name, k in kept.items())
    assert sum(kept.values()) / sum(channels.values()) == pytest.approx(0.5, abs=8 / sum(channels.values()))
    assert len(set(ratios.values())) > 2 and min(ratios.values()) < 0.3 and max(ratios.values()) > 0.7

    small = compress(model, x, keep=0.5, policy="global", importance="bn_scale")
    assert group_widths(small, x) == kept
    as_groups = compress(model, x, keep=ratios, importance="bn_scale")
    sa, sb = small.state_dict(), as_groups.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert small(x).shape == (2, 10) and params(small) < params(model)


def test_global_threshold_cuts_where_the_scales_are_small():
    """Three layers of 32 channels: all scales large; half small; three quarters small. A share of 56/96 keeps
    exactly the large ones — 32, 16 and 8 channels — whatever layer they are in."""
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    torch.manual_seed(0)
    large = [torch.randperm(32)[:n] for n in (32, 16, 8)]
    for bn, idx in zip((model[1], model[4], model[7]), large):
        bn.weight.data = torch.rand(32) * 0.05
        bn.weight.data[idx] = 0.5 + torch.rand(len(idx))
    small = compress(model, torch.randn(1, 1, 12, 12), keep=56 / 96, policy="global", importance="bn_scale")
    for layer, bn, idx in zip((0, 3, 6), (model[1], model[4], model[7]), large):
        assert small[layer].out_channels == len(idx)
        assert torch.equal(small[layer + 1].weight, bn.weight[idx.sort().values])


def test_global_threshold_never_empties_a_group():
    model, x = slimmed(widths=(32, 64, 64)), torch.randn(1, 1, 16, 16)
    ratios = global_keep_ratios(model, x, 0.02, "bn_scale")
    channels = group_widths(model, x)
    assert all(round(r * channels[n]) == 8 for n, r in ratios.items())
    tiny = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 64, 3), nn.BatchNorm2d(64),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    assert global_keep_ratios(tiny, x, 0.25) == {"3": 0.25}  # the 8-channel group is too small to round


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "googlenet", "regnet_x_400mf"])
def test_global_threshold_on_depthwise_concat_and_grouped_convs(name):
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", in_channels=3, num_classes=10, image_size=64).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features) * torch.rand(1)
    x = torch.randn(2, 3, 64, 64)
    groups = {g.name: g for g in prunable_groups(model, x)}
    ratios = global_keep_ratios(model, x, 0.5)
    kept = {n: round(r * groups[n].channels) for n, r in ratios.items()}
    for n, k in kept.items():  # equal in every channel group, a multiple of the rounding step or the whole group
        g = groups[n]
        per_group, step = k // g.channel_groups, 8 // math.gcd(8, g.channel_groups)
        assert k % g.channel_groups == 0 and per_group >= step
        assert per_group % step == 0 or k == g.channels
    assert sum(kept.values()) / sum(groups[n].channels for n in kept) == pytest.approx(0.5, abs=0.02)
    assert len(set(ratios.values())) > 3
    small = compress(model, x, keep=0.5, policy="global", importance="bn_scale")
    assert small(x).shape == (2, 10) and params(small) < 0.8 * params(model)


def tp_groups(model: nn.Module, x: torch.Tensor) -> dict[str, tp.Group]:
    """Torch-Pruning's dependency groups of `model`, by the name of their root layer."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    names = {m: n for n, m in model.named_modules()}
    return {names[g[0].dep.target.module]: g for g in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear))}


def test_comparable_scores_are_raw_scales_or_divided_by_their_group_mean():
    model, x = slimmed(), torch.randn(1, 1, 16, 16)
    groups = tp_groups(model, x)
    for criterion in ("l1", "bn_scale"):
        raw, comparable = make_importance(criterion, model), make_importance(criterion, model, comparable=True)
        for group in (g for g in groups.values() if any(isinstance(d.target.module, nn.BatchNorm2d) for d, _ in g)):
            r, c = raw(group), comparable(group)
            if criterion == "bn_scale":
                assert torch.equal(r, c)
            else:
                assert torch.allclose(c, r / r.mean()) and c.mean() == pytest.approx(1.0)
    mlp = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 32),
                        nn.ReLU(), nn.Linear(32, 10)).eval()
    mlp[1].weight.data = torch.rand(16) * 0.1
    hidden = tp_groups(mlp, torch.randn(1, 1, 8, 8))["4"]  # no BatchNorm: l1, brought to the scale of the γ
    scores = make_importance("bn_scale", mlp, comparable=True)(hidden)
    raw = make_importance("l1", mlp)(hidden)
    assert torch.allclose(scores, raw / raw.mean() * mlp[1].weight.abs().mean())


def test_global_policy_refuses_unclear_input():
    model, x = slimmed(), torch.randn(1, 1, 16, 16)
    with pytest.raises(CompressError, match="policy 'nope'"):
        compress(model, x, keep=0.5, policy="nope")
    with pytest.raises(CompressError, match="global policy takes one share"):
        compress(model, x, keep={"stem.0": 0.5}, policy="global")


def space_config(**changes: object) -> CompressSpaceConfig:
    base = {"model": "spaces.compress.nets:tiny_resnet", "kwargs": {"widths": [32, 64, 64], "depth": 2}}
    raw = {"type": "compress", "base": base, "keep": [0.2, 0.9], "importance": ["bn_scale", "l1"],
           "precision": ["fp32", "int8"], **changes}
    return CompressSpaceConfig.model_validate(raw)


def space(**changes: object) -> CompressSpace:
    return CompressSpace(space_config(**changes), in_channels=1, num_classes=10, image_size=16, base=slimmed())


def test_space_searches_the_policy_and_rebuilds_global_candidates():
    searched = space(policy=["group", "global"])
    seen = set()
    for seed in range(8):
        suggest = RandomSuggest(seed)
        candidate = json.loads(json.dumps(searched.sample(suggest)))
        seen.add(candidate["policy"])
        if candidate["policy"] == "global":
            assert set(candidate["keep"]) == {"*"} and "keep.global" in suggest.values
            assert not any(k.startswith("keep.") and k != "keep.global" for k in suggest.values)
            assert f"global keep {candidate['keep']['*']:.2f}" in CompressSpace.describe(candidate)
            a, b = searched.build(candidate), searched.build(candidate)
            assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
            assert params(a) < params(searched.base)
        else:
            assert "keep.global" not in suggest.values and set(candidate["keep"]) == {g.name for g in searched.groups}
    assert seen == {"group", "global"}
    anchors = searched.anchors(2)
    assert all(a["policy"] == "group" and "keep.global" not in a for a in anchors)
    only_global = space(policy=["global"]).anchors(2)
    assert [set(a) for a in only_global] == [{"keep.global", "importance", "precision"}] * 4


def test_default_space_samples_as_before_and_old_candidates_build_the_same():
    default = space()
    suggest = RandomSuggest(3)
    candidate = default.sample(suggest)
    assert "policy" not in suggest.values and candidate["policy"] == "group" and candidate["form"] == {}
    old = {k: v for k, v in candidate.items() if k not in ("policy", "form")}
    a, b = default.build(candidate), default.build(old)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    bad = {**candidate, "policy": "global"}
    with pytest.raises(CompressError, match="global policy holds one share"):
        default.build(bad)
