"""Tucker-2 factorization of k×k convs (1×1 reduce, k×k core, 1×1 expand) and the space searching the form."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from evaluators.to_onnx import export_onnx
from spaces import RandomSuggest
from spaces.compress import CompressError, CompressSpace, CompressSpaceConfig, compress
from spaces.compress.lowrank import factorize, factorize_layers, factorize_tucker2, tucker2_params, tucker2_ranks
from spaces.compress.nets import tiny_resnet


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cin, cout, kernel, stride, padding, dilation, bias", [
    (16, 32, 3, 1, 1, 1, False), (32, 16, 3, 2, 1, 1, True), (24, 24, (5, 3), 1, (2, 1), 1, True),
    (16, 16, 3, 1, 2, 2, False), (3, 64, 3, 1, 1, 1, False),
])
def test_tucker2_shapes_formula_and_exactness_at_full_rank(cin, cout, kernel, stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=bias)
    kh, kw = conv.kernel_size
    x = torch.randn(2, cin, 13, 13)
    r_in, r_out = tucker2_ranks(conv, 1.0)
    assert (r_in, r_out) == (min(cin, cout * kh * kw), min(cout, cin * kh * kw))
    full = factorize_tucker2(conv, r_in, r_out)
    assert torch.allclose(full(x), conv(x), atol=1e-4)
    for ratio in (0.25, 0.5):
        r_in, r_out = tucker2_ranks(conv, ratio)
        reduce, core, expand = factorize_tucker2(conv, r_in, r_out)
        assert (reduce.in_channels, reduce.out_channels, reduce.kernel_size) == (cin, r_in, (1, 1))
        assert reduce.stride == expand.stride == (1, 1)
        assert (core.in_channels, core.out_channels, core.kernel_size) == (r_in, r_out, (kh, kw))
        assert (core.stride, core.padding, core.dilation) == (conv.stride, conv.padding, conv.dilation)
        assert (expand.in_channels, expand.out_channels, expand.kernel_size) == (r_out, cout, (1, 1))
        assert reduce.bias is None and core.bias is None and (expand.bias is not None) == bias
        formula = cin * r_in + kh * kw * r_in * r_out + r_out * cout + (cout if bias else 0)
        assert params(nn.Sequential(reduce, core, expand)) == tucker2_params(conv, r_in, r_out) == formula
        assert expand(core(reduce(x))).shape == conv(x).shape


def test_tucker2_ranks_are_rounded_shares_of_the_channels():
    conv = nn.Conv2d(32, 64, 3)
    assert tucker2_ranks(conv, 0.5) == (16, 32)
    assert tucker2_ranks(conv, 0.3) == (8, 16)  # 9.6 and 19.2 to multiples of 8
    assert tucker2_ranks(conv, 0.01) == (8, 8)  # never below round_to
    assert tucker2_ranks(conv, 0.5, round_to=1) == (16, 32)


def test_tucker2_only_where_it_saves_parameters_and_only_on_kxk_convs():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    low = factorize(conv, 0.25, form="tucker2")
    assert len(low) == 3 and params(low) < params(conv)
    assert factorize(conv, 0.95, form="tucker2") is None  # ranks round up to 64: 64·64 + 9·64·64 + 64·64 > 9·64·64
    model = nn.Sequential(nn.Conv2d(8, 64, 1), nn.Conv2d(64, 64, 3))
    with pytest.raises(CompressError, match="layer '0'.*not a k×k conv"):
        factorize_layers(model, {"0": 0.5}, forms={"0": "tucker2"})
    with pytest.raises(CompressError, match="form 'cp'"):
        factorize_layers(model, {"1": 0.5}, forms={"1": "cp"})
    with pytest.raises(CompressError, match="no rank ratio"):
        compress(model, torch.randn(1, 8, 6, 6), rank={"1": 0.5}, form={"0": "tucker2"})
    with pytest.raises(CompressError, match="form 'cp': expected one of spatial, tucker2"):
        compress(model, torch.randn(1, 8, 6, 6), rank=0.5, form="cp")


def test_tucker2_network_exports_to_onnx_and_runs_the_same_in_onnx_runtime(tmp_path):
    torch.manual_seed(0)
    model = tiny_resnet(num_classes=10, in_channels=1, widths=(32, 64, 64)).eval()
    x = torch.randn(3, 1, 16, 16)
    small = compress(model, x, rank=0.25, form="tucker2")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    replaced = [n for n in convs if isinstance(small.get_submodule(n), nn.Sequential)]
    assert replaced and all(len(small.get_submodule(n)) == 3 for n in replaced)
    assert params(small) < 0.5 * params(model)
    with torch.no_grad():
        expected = small(x).numpy()
    path = export_onnx(small, (1, 16, 16), tmp_path / "tucker2.onnx", dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def space(**changes: object) -> CompressSpace:
    base = {"model": "spaces.compress.nets:tiny_resnet", "kwargs": {"widths": [32, 64, 64]}}
    raw = {"type": "compress", "base": base, "keep": [0.5, 1.0], "rank": [0.25, 0.75], "rank_step": 0.25, **changes}
    torch.manual_seed(0)
    model = tiny_resnet(num_classes=10, in_channels=1, widths=(32, 64, 64)).eval()
    return CompressSpace(CompressSpaceConfig.model_validate(raw), in_channels=1, num_classes=10, image_size=16,
                         base=model)


def test_space_searches_the_form_of_each_kxk_layer_and_rebuilds_tucker2_candidates():
    searched = space(rank_forms=["spatial", "tucker2"])
    kxk = {n for n, m in searched.base.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    kxk &= set(searched.rank_layers)
    assert kxk
    tucker = None
    for seed in range(6):
        suggest = RandomSuggest(seed)
        candidate = json.loads(json.dumps(searched.sample(suggest)))
        assert {k for k in suggest.values if k.startswith("form.")} == {f"form.{n}" for n in kxk}
        assert set(candidate["form"]) <= kxk & set(candidate["rank"])
        assert all(suggest.values[f"form.{n}"] == "tucker2" for n in candidate["form"])
        if candidate["form"]:
            tucker = candidate
    assert tucker is not None
    a, b = searched.build(tucker), searched.build(tucker)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert all(len(a.get_submodule(n)) == 3 for n in tucker["form"])
    assert f"tucker2 ×{len(tucker['form'])}" in CompressSpace.describe(tucker)
    assert all(a["form." + n] == "spatial" for a in space(rank=[0.25, 0.5], rank_forms=["spatial", "tucker2"])
               .anchors(1) for n in kxk)


def test_one_form_is_not_searched_and_the_default_samples_as_before():
    only = space(rank_forms=["tucker2"])
    suggest = RandomSuggest(1)
    candidate = only.sample(suggest)
    assert not any(k.startswith("form.") for k in suggest.values)
    assert candidate["form"] and set(candidate["form"].values()) == {"tucker2"}
    default, explicit = space(), space(rank_forms=["spatial"])
    a, b = RandomSuggest(2), RandomSuggest(2)
    assert default.sample(a) == explicit.sample(b) and a.values == b.values
    assert not any(k.startswith("form.") for k in a.values)
