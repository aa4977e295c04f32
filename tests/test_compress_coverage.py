"""`compress(keep=0.5)` on every torchvision classification model: it prunes, runs, exports to ONNX and runs in
ONNX Runtime — or refuses with a message naming the layer it cannot handle. Heavy models are marked slow."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from evaluators.to_onnx import export_onnx
from spaces.compress import CompressError, build_model, compress
from spaces.compress.models import torchvision_names

FAST = {
    "efficientnet_b0", "googlenet", "mnasnet0_5", "mnasnet1_0", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
    "regnet_y_400mf", "resnet18", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "squeezenet1_1", "swin_t",
}
# Smallest inputs the models accept and export (their adaptive pools must divide the feature map in ONNX).
INPUT_SIZE = {"alexnet": 224, "inception_v3": 75, "maxvit_t": 224, "vit_h_14": 56}
ATTENTION = ("vit_", "swin_", "maxvit_")


def input_size(name: str) -> int:
    return INPUT_SIZE.get(name, 224 if name.startswith("vgg") else 64)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in torchvision_names()]
)
def test_keep_half_runs_and_exports_or_refuses_naming_the_layer(name, tmp_path):
    torch.manual_seed(0)
    size = input_size(name)
    model = build_model(f"torchvision:{name}", in_channels=3, num_classes=10, image_size=size).eval()
    x = torch.randn(2, 3, size, size)
    if name.startswith(ATTENTION):
        with pytest.raises(CompressError, match=r"cannot prune layer '[\w.]+' \(\w+\)"):
            compress(model, x, keep=0.5)
        return
    assert_compresses_and_matches_onnx_runtime(model, x, tmp_path / f"{name}.onnx")


def assert_compresses_and_matches_onnx_runtime(model: nn.Module, x: torch.Tensor, path) -> None:
    """keep=0.5 cuts the parameters, keeps 10 outputs, and the exported ONNX model gives PyTorch's output."""
    small = compress(model, x, keep=0.5)
    assert params(small) < 0.75 * params(model)
    with torch.no_grad():
        expected = small(x).numpy()
    assert expected.shape == (x.shape[0], 10)
    path = export_onnx(small, tuple(x.shape[1:]), path, dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * scale)
