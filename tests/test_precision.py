"""fp16 and int8 ONNX conversion: the converted models run in ONNX Runtime and stay accurate."""

from __future__ import annotations

import onnx
import pytest
import torch.nn as nn

from evaluators.latency import get_backend
from evaluators.precision import calibration_batches, convert_precision, onnx_accuracy
from evaluators.splits import load_data
from evaluators.to_onnx import export_onnx
from evaluators.train import TrainSettings, evaluate, train_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = load_data("digits", image_size=8)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    train_model(model, data, TrainSettings(epochs=3, lr=0.1))
    path = export_onnx(model, data.input_shape, tmp_path_factory.mktemp("p") / "m.onnx", dynamic_batch=True)
    return data, model, path


def test_fp32_onnx_accuracy_matches_pytorch(trained):
    data, model, path = trained
    assert onnx_accuracy(path, data.val, batch_size=64) == pytest.approx(evaluate(model, data.val), abs=1e-9)


@pytest.mark.parametrize("precision, tolerance", [("fp16", 0.01), ("int8", 0.05)])
def test_lower_precision_keeps_accuracy(trained, tmp_path, precision, tolerance):
    data, model, path = trained
    out = convert_precision(path, tmp_path / f"m.{precision}.onnx", precision, calibration_batches(data.train))
    graph_ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    if precision == "int8":
        assert "QuantizeLinear" in graph_ops and "DequantizeLinear" in graph_ops
    else:
        assert "Cast" in graph_ops
    base = evaluate(model, data.val)
    assert abs(onnx_accuracy(out, data.val, batch_size=64) - base) <= tolerance


def test_backend_times_int8(trained):
    data, _, path = trained
    stats = get_backend("onnxruntime", max_seconds=0.2).measure(path, data.input_shape, "int8")
    assert stats.precision == "int8" and stats.median_ms > 0
