"""The PyTorch and TensorRT backends, the shared timing protocol, and how a study records its backend."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from evaluators.latency import BackendUnavailable, UnsupportedRequest, get_backend, resolve_backend_name
from evaluators.latency.base import SIMD_FLAGS, cpu_name
from evaluators.latency.tensorrt_backend import quantize_int8_symmetric
from evaluators.onnx_model import ExportedModel
from evaluators.to_onnx import export_onnx
from search.cli import main
from search.errors import UsageError
from search.recipe.config import load_config
from search.trial.context import make_backend

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = torch.cuda.is_available()


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10))


def test_torch_cpu_backend_measures_a_module():
    backend = get_backend("torch", device="cpu", threads=1, max_seconds=0.3)
    stats = backend.measure(small_net(), (3, 16, 16))
    assert stats.backend == "torch" and stats.backend_version == torch.__version__
    assert stats.device.startswith("cpu: ") and "1 thread" in stats.device
    assert stats.runs >= 30 and stats.warmup_runs >= 10
    assert 0 < stats.median_ms <= stats.p99_ms and stats.extra["timer"] == "perf_counter"
    assert stats.extra["rounds"] >= 3 and stats.extra["run_median_ms"] > 0


def test_torch_cpu_backend_restores_thread_count():
    before = torch.get_num_threads()
    get_backend("torch", device="cpu", threads=1, max_seconds=0.1).measure(small_net(), (3, 8, 8))
    assert torch.get_num_threads() == before


def test_torch_backend_times_the_module_of_an_exported_model_in_fp32(tmp_path):
    exported = ExportedModel(small_net(), (3, 8, 8), tmp_path)
    stats = get_backend("torch", device="cpu", threads=1, max_seconds=0.1).measure(exported, (3, 8, 8), batch_size=2)
    assert stats.backend == "torch" and stats.batch_size == 2 and stats.precision == "fp32"
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx"}, "the torch backend converts no ONNX"


@pytest.mark.parametrize("precision", ["int8"] + ([] if HAS_GPU else ["fp16"]))
def test_torch_backend_refuses_what_eager_cannot_run(precision):
    with pytest.raises(UnsupportedRequest, match="int8 needs a quantized engine"):
        get_backend("torch", device="auto").measure(small_net(), (3, 8, 8), precision)


def test_torch_backend_refuses_an_onnx_file(tmp_path):
    path = export_onnx(small_net(), (3, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedRequest, match="not ONNX files"):
        get_backend("torch").measure(path, (3, 8, 8))


def test_onnxruntime_headline_is_median_of_round_medians():
    stats = get_backend("onnxruntime", max_seconds=0.3).measure(small_net(), (3, 16, 16))
    assert stats.extra["rounds"] >= 3 and math.isfinite(stats.extra["round_cv"])
    assert stats.extra["threads"] == 1 and stats.extra["run_median_ms"] > 0


def test_onnxruntime_refuses_a_batch_the_model_was_not_exported_with(tmp_path):
    path = export_onnx(small_net(), (3, 8, 8), tmp_path / "m.onnx", batch_size=1)
    with pytest.raises(UnsupportedRequest, match="does not fit batch 4"):
        get_backend("onnxruntime", max_seconds=0.1).measure(path, (3, 8, 8), batch_size=4)


@pytest.mark.skipif(HAS_TENSORRT and HAS_GPU, reason="TensorRT and a CUDA GPU are present")
def test_tensorrt_without_it_names_what_is_missing():
    with pytest.raises(BackendUnavailable) as err:
        get_backend("tensorrt")
    message = str(err.value)
    if not HAS_TENSORRT:
        assert "TensorRT is not installed" in message and "https://pypi.nvidia.com tensorrt" in message
    if not HAS_GPU:
        assert "no CUDA GPU" in message
    assert resolve_backend_name("auto") == "onnxruntime"


def test_tensorrt_unavailable_is_a_usage_error_for_a_recipe(recipe_file):
    if HAS_TENSORRT and HAS_GPU:
        pytest.skip("TensorRT and a CUDA GPU are present")
    assert main(["latency", str(recipe_file()), "--backend", "tensorrt"]) == 2


def test_int8_for_tensorrt_is_symmetric_signed_qdq(tmp_path):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx")
    out = quantize_int8_symmetric(path, tmp_path / "m.int8.onnx", None)
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert any(n.op_type == "QuantizeLinear" for n in qdq)
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
        if node.input[0] in inits:
            assert inits[node.input[0]].dtype == np.int8  # no int32 bias dequantization
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 10)


def test_make_backend_refuses_a_precision_the_backend_cannot_run(recipe_file):
    config = load_config(recipe_file(), ["latency.backend=torch", "latency.precision=int8"])
    with pytest.raises(UsageError, match="latency.precision=int8"):
        make_backend(config.latency)


needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT not installed")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@needs_gpu
@needs_tensorrt
def test_tensorrt_builds_times_and_caches(tmp_path, precision):
    backend = get_backend("tensorrt", cache_dir=tmp_path / "cache", min_seconds=0.2)
    stats = backend.measure(small_net(), (3, 32, 32), precision)
    assert stats.backend == "tensorrt" and stats.precision == precision and stats.runs >= 200
    assert 0 < stats.median_ms <= stats.p99_ms and stats.build_seconds > 0
    assert stats.extra["engine_cached"] is False and stats.extra["cuda_graph"] == "on"
    assert list((tmp_path / "cache" / "engines").glob("*.engine"))
    assert backend.timing_cache_file(precision).stat().st_size > 0
    again = backend.measure(small_net(), (3, 32, 32), precision)
    assert again.extra["engine_cached"] is True and again.build_seconds == 0


@needs_gpu
@needs_tensorrt
def test_tensorrt_times_a_dynamic_batch_onnx_and_auto_picks_it(tmp_path):
    path = export_onnx(small_net(), (3, 16, 16), tmp_path / "m.onnx", dynamic_batch=True)
    stats = get_backend("tensorrt", min_seconds=0.2).measure(path, (3, 16, 16), batch_size=8)
    assert stats.batch_size == 8 and stats.median_ms > 0
    assert resolve_backend_name("auto") == "tensorrt"


@needs_gpu
@pytest.mark.parametrize("cuda_graph", [True, False])
def test_torch_cuda_backend_times_graph_replays_or_eager_launches_with_cuda_events(cuda_graph):
    backend = get_backend("torch", device="cuda", max_seconds=0.2, cuda_graph=cuda_graph)
    stats = backend.measure(small_net(), (3, 32, 32), "fp16")
    assert stats.device.startswith("cuda: ") and stats.extra["timer"] == "cuda events" and stats.runs >= 200
    assert stats.extra["cuda_graph"] == ("on" if cuda_graph else "off") and stats.median_ms > 0


@needs_gpu
def test_a_recipe_can_turn_the_cuda_graph_off(recipe_file):
    config = load_config(recipe_file(), ["latency.backend=torch", "latency.cuda_graph=false"])
    stats = make_backend(config.latency).measure(small_net(), (3, 16, 16))
    assert stats.extra["cuda_graph"] == "off"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo on this system")
def test_the_cpu_is_named_by_model_family_and_vector_extensions():
    first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    name = cpu_name()
    if "model name" in fields:
        assert name.startswith(fields["model name"])
    if "cpu family" in fields:
        assert f"family {fields['cpu family']} model {fields['model']}" in name
    listed = set(name.rsplit(", ", 1)[-1].split("+")) if flags & set(SIMD_FLAGS) else set()
    assert listed == flags & set(SIMD_FLAGS)
    assert get_backend("onnxruntime", threads=1).device() == f"{name} (1 thread)"
