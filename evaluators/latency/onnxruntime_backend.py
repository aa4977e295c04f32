"""ONNX Runtime on the CPU: fixed threads, sequential execution, warm-up, rounds until the timings settle."""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch.nn as nn

from evaluators.latency.base import BackendUnavailable, LatencyStats, register_backend, summarize
from evaluators.onnx_export import export_onnx
from evaluators.precision import convert_precision


def cpu_name() -> str:
    """The CPU model as the kernel reports it (falls back to the platform string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed: pip install onnxruntime"
    return None


@register_backend("onnxruntime", _unavailable)
class OnnxRuntimeBackend:
    """Times `InferenceSession.run` on the CPU execution provider.

    Warm-up runs for `warmup_s`; then rounds of timed runs go on until the coefficient of variation of
    the round medians is under `target_cv` (after `min_rounds`) or `max_seconds` is spent. The reported
    median is over all timed runs.
    """

    name = "onnxruntime"

    def __init__(
        self,
        threads: int = 1,
        warmup_s: float = 0.1,
        round_runs: int = 50,
        min_rounds: int = 3,
        max_rounds: int = 20,
        target_cv: float = 0.02,
        max_seconds: float = 3.0,
    ) -> None:
        if _unavailable():
            raise BackendUnavailable(_unavailable())
        self.threads = threads
        self.warmup_s = warmup_s
        self.round_runs = round_runs
        self.min_rounds = min_rounds
        self.max_rounds = max_rounds
        self.target_cv = target_cv
        self.max_seconds = max_seconds

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def device(self) -> str:
        return f"{cpu_name()} ({self.threads} thread{'s' if self.threads > 1 else ''})"

    def session(self, onnx_path: str | Path):
        """An inference session pinned to `threads` intra-op threads and sequential execution."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def measure(
        self, model: nn.Module | str | Path, input_shape: tuple[int, ...], precision: str = "fp32", batch_size: int = 1,
        calibration: Sequence[np.ndarray] | None = None,
    ) -> LatencyStats:
        """Latency of one batch of `input_shape` (C, H, W); a module is exported to ONNX first, and the
        ONNX converted to `precision` (int8: static quantization on `calibration` batches)."""
        with tempfile.TemporaryDirectory() as tmp:
            if isinstance(model, nn.Module):
                onnx_path = export_onnx(model, input_shape, Path(tmp) / "model.onnx", batch_size)
            else:
                onnx_path = Path(model)
            t0 = time.perf_counter()
            if precision != "fp32":
                onnx_path = convert_precision(onnx_path, Path(tmp) / f"model.{precision}.onnx", precision, calibration)
            sess = self.session(onnx_path)
            build_seconds = time.perf_counter() - t0
            return self._time(sess, input_shape, precision, batch_size, build_seconds)

    def _time(self, sess, input_shape, precision: str, batch_size: int, build_seconds: float) -> LatencyStats:
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)
        feed = {inp.name: x}
        run = sess.run
        warmup_runs = 0
        t_end = time.perf_counter() + self.warmup_s
        while warmup_runs < 10 or time.perf_counter() < t_end:
            run(None, feed)
            warmup_runs += 1
        times: list[float] = []
        round_medians: list[float] = []
        deadline = time.perf_counter() + self.max_seconds
        while len(round_medians) < self.max_rounds:
            chunk = []
            for _ in range(self.round_runs):
                t = time.perf_counter_ns()
                run(None, feed)
                chunk.append((time.perf_counter_ns() - t) / 1e6)
            times.extend(chunk)
            round_medians.append(float(np.median(chunk)))
            if len(round_medians) >= self.min_rounds:
                rm = np.asarray(round_medians)
                if rm.std() / rm.mean() <= self.target_cv or time.perf_counter() > deadline:
                    break
        rm = np.asarray(round_medians)
        return summarize(
            times, warmup_runs=warmup_runs, backend=self.name, version=self.version(), device=self.device(),
            precision=precision, batch_size=batch_size, build_seconds=build_seconds,
            extra={"rounds": len(round_medians), "round_cv": float(rm.std() / rm.mean()), "threads": self.threads},
        )
