"""The ONNX Runtime backend times a real session and reports complete statistics."""

from __future__ import annotations

import math

import pytest
import torch.nn as nn

from evaluators.latency import AVAILABILITY, UnsupportedRequest, get_backend, resolve_backend_name
from evaluators.onnx_model import ExportedModel
from evaluators.to_onnx import export_onnx
from registry import UnknownName


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


def test_measure_module_reports_stats():
    backend = get_backend("onnxruntime", threads=1, max_seconds=0.3)
    stats = backend.measure(small_net(), (3, 16, 16))
    assert stats.backend == "onnxruntime" and stats.backend_version
    rounds, round_runs = stats.extra["rounds"], stats.extra["round_runs"]  # how many fit depends on the machine
    assert stats.runs == rounds * round_runs and rounds >= 3 and round_runs >= 10 and stats.warmup_runs >= 10
    assert 0 < stats.median_ms <= stats.p90_ms <= stats.p99_ms
    assert math.isfinite(stats.cv) and stats.precision == "fp32" and "thread" in stats.device


def test_measure_onnx_file(tmp_path):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx")
    stats = get_backend("onnxruntime", max_seconds=0.2).measure(path, (3, 16, 16))
    assert stats.median_ms > 0


def test_an_exported_model_is_timed_from_its_own_files_at_each_precision(tmp_path):
    exported = ExportedModel(small_net(), (3, 16, 16), tmp_path)
    backend = get_backend("onnxruntime", max_seconds=0.1)
    for precision in ("fp32", "fp16", "int8"):
        stats = backend.measure(exported, (3, 16, 16), precision, batch_size=4)
        assert stats.precision == precision and stats.batch_size == 4 and stats.median_ms > 0
    made = {p.name for p in tmp_path.iterdir()}
    assert made == {"model.onnx", "model.batch4.onnx", "model.fp16.onnx", "model.fp16.batch4.onnx",
                    "model.int8.onnx", "model.int8.batch4.onnx"}
    backend.measure(exported, (3, 16, 16), "int8", batch_size=4)
    assert {p.name for p in tmp_path.iterdir()} == made, "a second measurement converts nothing again"


def test_a_measurement_that_does_not_fit_the_onnx_input_is_refused(tmp_path):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx", batch_size=2)
    with pytest.raises(UnsupportedRequest, match="does not fit batch 1"):
        get_backend("onnxruntime", max_seconds=0.1).measure(path, (3, 16, 16))


def test_auto_resolves_to_tensorrt_only_where_it_can_run():
    expected = "tensorrt" if AVAILABILITY["tensorrt"]() is None else "onnxruntime"
    assert resolve_backend_name("auto") == expected


def test_unknown_backend_is_refused_listing_the_known_ones():
    with pytest.raises(UnknownName, match="unknown latency backend 'warp-drive'; known latency backends: onnxruntime"):
        get_backend("warp-drive")
