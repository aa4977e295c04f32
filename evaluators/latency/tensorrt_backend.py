"""TensorRT on an NVIDIA GPU: a strongly typed engine built from the ONNX, timed as trtexec's GPU compute time.

Precision lives in the ONNX graph itself, on TensorRT 10.x and 11.x alike: fp16 is the graph converted to
half precision (inputs and outputs kept fp32), int8 is explicit symmetric Q/DQ quantization calibrated on
real batches. The network is created strongly typed, so TensorRT runs each layer in the type the graph
says; 11.x removed the weak-typing builder flags (FP16, INT8, calibrators) and always builds this way.

Builds are cached: an engine cache keyed by ONNX hash + TensorRT version + GPU + precision + shape, and one
timing cache per TensorRT version, GPU and precision, reused by every candidate of a study.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from evaluators.latency.base import (
    BackendUnavailable,
    LatencyStats,
    UnsupportedRequest,
    check_input,
    onnx_input_dims,
    register_backend,
)
from evaluators.latency.timing import Timings, cuda_event_times
from evaluators.onnx_model import ExportedModel
from evaluators.precision import convert_precision
from evaluators.to_onnx import export_onnx, file_sha256

INSTALL_HINT = "pip install --extra-index-url https://pypi.nvidia.com tensorrt"


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build an engine; the message carries TensorRT's own errors."""


def _unavailable() -> str | None:
    missing = []
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or OSError when the package is there but its libraries are not
        missing.append(f"TensorRT is not installed ({type(exc).__name__}: {exc}); install it with `{INSTALL_HINT}`")
    if not torch.cuda.is_available():
        missing.append(
            "no CUDA GPU: torch.cuda.is_available() is False (TensorRT needs an NVIDIA GPU, its driver, "
            "and a CUDA build of torch)"
        )
    return "; ".join(missing) or None


def quantize_int8_symmetric(src: Path, dst: Path, calibration: Sequence[np.ndarray] | None) -> Path:
    """Static int8 Q/DQ in the form TensorRT executes (signed, zero point 0, per-channel weights, float biases)."""
    return convert_precision(src, dst, "int8", calibration, symmetric=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@register_backend(
    "tensorrt", _unavailable, settings={"cache_dir": "cache_dir", "max_seconds": "min_seconds", "cuda_graph": "cuda_graph"}
)
class TensorRTBackend:
    """Builds a TensorRT engine per network and times it on the GPU.

    Build: `OnnxParser` into a strongly typed network, `workspace_mb` of workspace, the shared timing cache,
    `build_serialized_network`; the plan is kept in `cache_dir/engines` (when `cache_dir` is set) and
    reused when the same ONNX, TensorRT, GPU, precision and shape come again. Timing: the input and
    output live on the GPU; `execute_async_v3` is captured once into a CUDA graph on a non-default stream
    (trtexec's `--useCudaGraph`; plain enqueues when an engine cannot be captured, recorded in
    `extra.cuda_graph`), warmed up for `warmup_s`, then launched at least `min_iterations` times and for at
    least `min_seconds`, a pair of CUDA events around each launch: the GPU compute time, without
    host-device copies. The median, p90, p99 and CV are over those launches; `build_seconds` is the
    export, conversion and engine build (0 for a cached engine, whose reuse is marked in `extra.engine_cached`).
    """

    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")

    def __init__(
        self, cache_dir: str | Path | None = None, workspace_mb: int = 1024, warmup_s: float = 0.2,
        min_iterations: int = 200, min_seconds: float = 1.0, cuda_graph: bool = True,
    ) -> None:
        why = _unavailable()
        if why:
            raise BackendUnavailable(f"the tensorrt latency backend cannot run here: {why}")
        import tensorrt as trt

        self._trt = trt
        self._logger = _collecting_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.workspace_mb = workspace_mb
        self.warmup_s = warmup_s
        self.min_iterations = min_iterations
        self.min_seconds = min_seconds
        self.cuda_graph = cuda_graph
        self._timing_caches: dict[str, bytes] = {}

    def version(self) -> str:
        return self._trt.__version__

    def device(self) -> str:
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (sm_{major}{minor})"

    def measure(
        self, model: nn.Module | str | Path | ExportedModel, input_shape: tuple[int, ...], precision: str = "fp32",
        batch_size: int = 1, calibration: Sequence[np.ndarray] | None = None,
    ) -> LatencyStats:
        """Latency of one batch of `input_shape` (C, H, W): export (for a module), convert to `precision`
        (an `ExportedModel` gives its own conversion, with the batch fixed), build or reuse the engine, and
        time it."""
        if precision not in self.precisions:
            raise UnsupportedRequest(f"unknown precision {precision!r}; expected one of {', '.join(self.precisions)}")
        shape = (batch_size, *input_shape)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            if isinstance(model, ExportedModel):
                onnx_path = model.fixed(model.at(precision, calibration, symmetric=True), batch_size)
            else:
                if isinstance(model, nn.Module):
                    onnx_path = export_onnx(model, input_shape, Path(tmp) / "model.onnx", batch_size)
                else:
                    onnx_path = Path(model)
                    check_input(onnx_path, onnx_input_dims(onnx_path), input_shape, batch_size)
                if precision == "int8":
                    onnx_path = quantize_int8_symmetric(onnx_path, Path(tmp) / "model.int8.onnx", calibration)
                elif precision == "fp16":
                    onnx_path = convert_precision(onnx_path, Path(tmp) / "model.fp16.onnx", "fp16")
            plan, cached = self.engine_plan(onnx_path, precision, shape)
            build_seconds = 0.0 if cached else time.perf_counter() - t0
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineBuildError(f"TensorRT could not deserialize the engine: {self._logger.take()}")
        timings, graph_note = self._time(engine, shape)
        return timings.stats(
            backend=self.name, version=self.version(), device=self.device(), precision=precision,
            batch_size=batch_size, build_seconds=build_seconds,
            extra={"engine_cached": cached, "cuda_graph": graph_note, "timer": "cuda events",
                   "workspace_mb": self.workspace_mb},
        )

    def engine_key(self, onnx_path: Path, precision: str, shape: tuple[int, ...]) -> str:
        """Engine-cache key: ONNX content hash + TensorRT version + GPU name + precision + input shape."""
        parts = [file_sha256(onnx_path), self.version(), torch.cuda.get_device_name(), precision,
                 "x".join(map(str, shape))]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def engine_plan(self, onnx_path: Path, precision: str, shape: tuple[int, ...]) -> tuple[bytes, bool]:
        """The serialized engine for this network: from the engine cache, or built now (and cached)."""
        cache_file = None
        if self.cache_dir is not None:
            cache_file = self.cache_dir / "engines" / f"{self.engine_key(onnx_path, precision, shape)}.engine"
            if cache_file.is_file():
                return cache_file.read_bytes(), True
        plan = self.build(onnx_path, precision, shape)
        if cache_file is not None:
            _write_atomic(cache_file, plan)
        return plan, False

    def timing_cache_file(self, precision: str) -> Path | None:
        """Where the timing cache of this TensorRT version, GPU and precision is kept (None: memory only)."""
        if self.cache_dir is None:
            return None
        name = f"timing-{_slug(self.version())}-{_slug(torch.cuda.get_device_name())}-{precision}.cache"
        return self.cache_dir / name

    def build(self, onnx_path: Path, precision: str, shape: tuple[int, ...]) -> bytes:
        """Parse the ONNX into a strongly typed network and build a serialized engine, through the timing cache."""
        trt = self._trt
        builder = trt.Builder(self._logger)
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {errors or self._logger.take()}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        self._fix_dynamic_inputs(builder, network, config, shape)
        cache_file = self.timing_cache_file(precision)
        known = self._timing_caches.get(precision, b"")
        if cache_file is not None and cache_file.is_file():
            known = cache_file.read_bytes()
        timing_cache = config.create_timing_cache(known)
        config.set_timing_cache(timing_cache, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineBuildError(f"TensorRT could not build an engine for {onnx_path.name}: {self._logger.take()}")
        updated = bytes(memoryview(timing_cache.serialize()))
        self._timing_caches[precision] = updated
        if cache_file is not None:
            _write_atomic(cache_file, updated)
        return bytes(memoryview(plan))

    def _fix_dynamic_inputs(self, builder: Any, network: Any, config: Any, shape: tuple[int, ...]) -> None:
        """Give inputs with dynamic dimensions (e.g. a dynamic batch) one optimization profile at `shape`."""
        dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
        if not dynamic:
            return
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)

    def _time(self, engine: Any, shape: tuple[int, ...]) -> tuple[Timings, str]:
        """Allocate I/O on the GPU, capture the enqueue into a CUDA graph, and time it with CUDA events."""
        trt = self._trt
        context = engine.create_execution_context()
        buffers = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and -1 in tuple(engine.get_tensor_shape(name)):
                context.set_input_shape(name, shape)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dims = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            tensor = torch.zeros(dims, dtype=dtype, device="cuda")
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and tensor.is_floating_point():
                tensor.normal_(generator=torch.Generator("cuda").manual_seed(0))
            buffers.append(tensor)
            context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.Stream()

        def enqueue() -> None:
            if not context.execute_async_v3(stream.cuda_stream):
                raise EngineBuildError(f"TensorRT enqueue failed: {self._logger.take()}")

        with torch.cuda.stream(stream):
            enqueue()  # the first enqueue sets up lazily allocated resources before any capture
        stream.synchronize()
        launch, note = enqueue, "off"
        if self.cuda_graph:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                    enqueue()
                launch, note = graph.replay, "on"
            except RuntimeError as exc:
                note = f"capture failed, timed plain enqueues: {exc}"
        timings = cuda_event_times(launch, stream, warmup_s=self.warmup_s, min_iterations=self.min_iterations,
                                   min_seconds=self.min_seconds)
        del buffers  # the I/O tensors go first; the execution context goes with this call, before its engine
        return timings, note


def _collecting_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps warnings and errors so a failed parse or build can say why."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.messages.append(msg)

        def take(self) -> str:
            out, self.messages = "; ".join(self.messages[-5:]), []
            return out or "no message from TensorRT"

    return CollectingLogger()
