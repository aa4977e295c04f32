"""Every block: output shape at stride 1 and 2, parameters equal to its closed form and to fvcore's count,
and an ONNX export that ONNX Runtime runs to the same output as PyTorch with export-friendly ops only."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from fvcore.nn import parameter_count

from evaluators.to_onnx import export_onnx
from spaces.blocks.library import BLOCKS

NAMES = sorted(BLOCKS)
# (in, out, stride): same shape, wider, narrower and strided, wider and strided, an RGB-like input
SHAPES = [(8, 8, 1), (8, 16, 1), (16, 8, 2), (8, 24, 2), (24, 24, 2), (16, 16, 1), (4, 16, 2)]
EXPORT_OPS = {
    "Conv", "Relu", "Add", "Mul", "Neg", "Concat", "Reshape", "Transpose", "Split", "AveragePool", "MaxPool",
    "BatchNormalization", "Shape", "Gather", "Unsqueeze", "Constant", "Slice", "Identity",
}


def option_grid(name: str) -> list[dict]:
    """Every combination of the block's searched option values."""
    opts = BLOCKS[name].SEARCH_OPTIONS
    return [dict(zip(opts, values)) for values in itertools.product(*opts.values())]


def randomized(model: nn.Module) -> nn.Module:
    """Eval-mode model whose BN statistics and affine parameters are not the identity, so export is tested."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        for p in model.parameters():
            if p.dim() == 1:  # BN scales and shifts, biases, C.ReLU's scale and bias
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cin, cout, stride", SHAPES)
def test_shape_and_closed_form_params(name, cin, cout, stride):
    cls = BLOCKS[name]
    for options in option_grid(name):
        block = cls(cin, cout, stride, **options).eval()
        out = block(torch.randn(2, cin, 9, 7))
        assert out.shape == (2, cout, -(-9 // stride), -(-7 // stride)), (options, out.shape)
        counted = sum(p.numel() for p in block.parameters())
        assert cls.param_count(cin, cout, stride, **options) == counted, options
        assert parameter_count(block)[""] == counted


@pytest.mark.parametrize("name", NAMES)
def test_every_width_the_space_samples_builds(name):
    """Any pair of multiples of 8 (the default round_to) and either stride gives a working block."""
    cls = BLOCKS[name]
    widths = [8, 16, 40]
    for cin, cout, stride in itertools.product(widths, widths, (1, 2)):
        for options in option_grid(name):
            block = cls(cin, cout, stride, **options).eval()
            assert block(torch.randn(1, cin, 5, 5)).shape == (1, cout, -(-5 // stride), -(-5 // stride))


@pytest.mark.parametrize("name", NAMES)
def test_default_options_are_searched_and_documented(name):
    cls = BLOCKS[name]
    assert set(cls.SEARCH_OPTIONS) <= set(cls.option_names())
    assert "Params" in (cls.__doc__ or "") and "Options" in (cls.__doc__ or "")
    block = cls(8, 16, 2)
    assert cls.param_count(8, 16, 2) == parameter_count(block)[""]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cin, cout, stride", [(16, 16, 1), (8, 24, 2), (24, 16, 2)])
def test_onnx_runtime_matches_pytorch(name, cin, cout, stride, tmp_path):
    options = option_grid(name)[-1]
    block = randomized(BLOCKS[name](cin, cout, stride, **options))
    path = export_onnx(block, (cin, 9, 7), tmp_path / f"{name}.onnx", batch_size=2)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops <= EXPORT_OPS, f"{name} exports unexpected ops {ops - EXPORT_OPS}"
    x = torch.randn(2, cin, 9, 7)
    with torch.no_grad():
        expected = block(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in NAMES if BLOCKS[n].channel_multiple > 1])
def test_odd_width_is_refused_with_the_reason(name):
    with pytest.raises(ValueError, match=f"{name}.*multiple of 2"):
        BLOCKS[name](8, 15)


def test_registry_has_the_nine_blocks():
    assert NAMES == sorted(
        ["conv", "crelu", "dwsep", "mbconv", "shuffle", "shufflev2", "fire", "factorized", "bottleneck"]
    )
