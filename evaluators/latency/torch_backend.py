"""PyTorch: the network as written, on a CUDA GPU (a CUDA graph of the forward, CUDA events) or on the CPU."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from evaluators.latency.base import LatencyStats, UnsupportedRequest, cpu_name, register_backend
from evaluators.latency.timing import cpu_rounds, cuda_event_times
from evaluators.onnx_model import ExportedModel


def _unavailable() -> str | None:
    return None


@register_backend(
    "torch", _unavailable,
    settings={"threads": "threads", "max_seconds": "max_seconds", "target_cv": "target_cv", "cuda_graph": "cuda_graph"},
)
class TorchBackend:
    """Times `model(x)` under `torch.inference_mode()` (no compilation, no engine).

    On CUDA (`device="auto"` picks it when a GPU is visible) the forward is captured once into a CUDA graph
    (`cuda_graph`, recorded in `extra.cuda_graph`; eager launches if capture fails or it is off) and each
    replay runs on a non-default stream between two CUDA events, after at least `warmup_s` of warm-up, for at
    least `min_iterations` runs and `max_seconds`; fp16 runs the module and input in half precision. The
    graph removes Python and kernel-launch overhead, which on a fast GPU otherwise dominates a small
    network and makes latency count layers rather than work; `cuda_graph=False` measures what a plain eager
    deployment pays. On the CPU, torch uses `threads` intra-op threads while timing (restored afterwards)
    and runs are timed in rounds like ONNX Runtime's. int8 is refused: PyTorch has no int8 path for these
    networks here; ONNX Runtime and TensorRT time int8 through explicit Q/DQ graphs.
    """

    name = "torch"

    def __init__(
        self, device: str = "auto", threads: int = 1, warmup_s: float = 0.2, min_iterations: int = 200,
        max_seconds: float = 3.0, target_cv: float = 0.02, cuda_graph: bool = True,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise UnsupportedRequest(f"torch backend device must be auto, cpu or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise UnsupportedRequest("torch backend: device 'cuda' asked for, but torch.cuda.is_available() is False")
        self.device_type = device
        self.threads = threads
        self.warmup_s = warmup_s
        self.min_iterations = min_iterations
        self.max_seconds = max_seconds
        self.target_cv = target_cv
        self.cuda_graph = cuda_graph

    @property
    def precisions(self) -> tuple[str, ...]:
        return ("fp32", "fp16") if self.device_type == "cuda" else ("fp32",)

    def version(self) -> str:
        return torch.__version__

    def device(self) -> str:
        if self.device_type == "cuda":
            return f"cuda: {torch.cuda.get_device_name()}"
        return f"cpu: {cpu_name()} ({self.threads} thread{'s' if self.threads > 1 else ''})"

    def measure(
        self, model: nn.Module | str | Path | ExportedModel, input_shape: tuple[int, ...], precision: str = "fp32",
        batch_size: int = 1, calibration: Sequence[np.ndarray] | None = None,
    ) -> LatencyStats:
        """Latency of one batch of `input_shape` (C, H, W) through a copy of `model` (an `ExportedModel`'s
        module) in eval mode."""
        if isinstance(model, ExportedModel):
            model = model.module
        if not isinstance(model, nn.Module):
            raise UnsupportedRequest(
                f"the torch backend times nn.Modules, not ONNX files ({model}); use --backend onnxruntime or tensorrt"
            )
        if precision not in self.precisions:
            raise UnsupportedRequest(
                f"the torch backend on {self.device_type} runs {' and '.join(self.precisions)}, not {precision}; "
                "int8 needs a quantized engine: use the onnxruntime or tensorrt backend"
            )
        net = copy.deepcopy(model).eval()
        dtype = torch.float16 if precision == "fp16" else torch.float32
        x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
        if self.device_type == "cuda":
            return self._measure_cuda(net, x, dtype, precision, batch_size)
        return self._measure_cpu(net, x, precision, batch_size)

    def _meta(self, precision: str, batch_size: int) -> dict[str, object]:
        return {"backend": self.name, "version": self.version(), "device": self.device(), "precision": precision,
                "batch_size": batch_size}

    def _measure_cuda(self, net: nn.Module, x: torch.Tensor, dtype: torch.dtype, precision: str,
                      batch_size: int) -> LatencyStats:
        net = net.to("cuda", dtype)
        x = x.to("cuda", dtype)
        stream = torch.cuda.Stream()
        with torch.inference_mode():
            launch, note = self._graph_or_eager(lambda: net(x), stream)
            timings = cuda_event_times(
                launch, stream, warmup_s=self.warmup_s, min_iterations=self.min_iterations,
                min_seconds=min(1.0, self.max_seconds),
            )
        extra = {"timer": "cuda events", "cuda_graph": note}
        return timings.stats(**self._meta(precision, batch_size), extra=extra)

    def _graph_or_eager(
        self, forward: Callable[[], object], stream: torch.cuda.Stream
    ) -> tuple[Callable[[], object], str]:
        """The replay of a CUDA graph of `forward` and "on", or `forward` itself and why not."""
        with torch.cuda.stream(stream):
            for _ in range(3):  # lazy initialization and algorithm selection happen before the capture
                forward()
        stream.synchronize()
        if not self.cuda_graph:
            return forward, "off"
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                forward()
        except RuntimeError as exc:
            return forward, f"capture failed, timed eager launches: {exc}"
        return graph.replay, "on"

    def _measure_cpu(self, net: nn.Module, x: torch.Tensor, precision: str, batch_size: int) -> LatencyStats:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                timings = cpu_rounds(lambda: net(x), warmup_s=self.warmup_s, target_cv=self.target_cv,
                                     max_seconds=self.max_seconds)
        finally:
            torch.set_num_threads(before)
        return timings.stats(**self._meta(precision, batch_size), extra={"timer": "perf_counter",
                                                                         "threads": self.threads})
