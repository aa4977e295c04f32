"""The ONNX Runtime backend times a real session and reports complete statistics."""

from __future__ import annotations

import pytest
import torch.nn as nn

from evaluators.latency import BackendUnavailable, get_backend, resolve_backend_name
from evaluators.onnx_export import export_onnx


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


def test_measure_module_reports_stats():
    backend = get_backend("onnxruntime", threads=1, max_seconds=0.3)
    stats = backend.measure(small_net(), (3, 16, 16))
    assert stats.backend == "onnxruntime" and stats.backend_version
    assert stats.runs >= 150 and stats.warmup_runs >= 10
    assert 0 < stats.median_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.cv >= 0 and stats.precision == "fp32" and "thread" in stats.device


def test_measure_onnx_file(tmp_path):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx")
    stats = get_backend("onnxruntime", max_seconds=0.2).measure(path, (3, 16, 16))
    assert stats.median_ms > 0


def test_bigger_model_is_slower():
    backend = get_backend("onnxruntime", max_seconds=0.5)
    small = backend.measure(small_net(), (3, 32, 32)).median_ms
    big = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1) for i in range(4)])
    assert backend.measure(big, (3, 32, 32)).median_ms > 3 * small


def test_auto_resolves_to_an_available_backend():
    assert resolve_backend_name("auto") in ("onnxruntime", "tensorrt")


def test_unknown_backend_is_refused():
    with pytest.raises(BackendUnavailable, match="unknown latency backend"):
        get_backend("warp-drive")
