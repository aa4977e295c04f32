"""ONNX Runtime on the CPU: fixed threads, sequential execution, warm-up, rounds until the timings settle."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch.nn as nn

from evaluators.latency.base import BackendUnavailable, LatencyStats, check_input, cpu_name, register_backend
from evaluators.latency.timing import cpu_rounds
from evaluators.onnx_model import ExportedModel
from evaluators.precision import convert_precision
from evaluators.to_onnx import export_onnx

if TYPE_CHECKING:
    import onnxruntime as ort

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed: pip install onnxruntime"
    return None


@register_backend(
    "onnxruntime", _unavailable, settings={"threads": "threads", "max_seconds": "max_seconds", "target_cv": "target_cv"}
)
class OnnxRuntimeBackend:
    """Times `InferenceSession.run` on the CPU execution provider.

    The session has `threads` intra-op threads (a fixed number, so results do not depend on how many cores
    happen to be idle), one inter-op thread and sequential execution; its worker threads spin between runs
    when `spinning` (lower, steadier latency with several threads, as a serving process would run). The
    garbage collector is paused while timing. Warm-up runs for `warmup_s`; then rounds of timed runs go on
    until the coefficient of variation of the round medians is under `target_cv` (after `min_rounds`) or
    `max_seconds` is spent. The headline median is the median of the round medians, so one round disturbed
    by another process does not move it; the per-run p90 / p99 / mean / CV are kept.
    """

    name = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")

    def __init__(
        self,
        threads: int = 1,
        warmup_s: float = 0.1,
        round_runs: int = 50,
        min_rounds: int = 3,
        max_rounds: int = 20,
        target_cv: float = 0.02,
        max_seconds: float = 3.0,
        spinning: bool = True,
    ) -> None:
        why = _unavailable()
        if why:
            raise BackendUnavailable(why)
        self.threads = threads
        self.warmup_s = warmup_s
        self.round_runs = round_runs
        self.min_rounds = min_rounds
        self.max_rounds = max_rounds
        self.target_cv = target_cv
        self.max_seconds = max_seconds
        self.spinning = spinning

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def device(self) -> str:
        return f"{cpu_name()} ({self.threads} thread{'s' if self.threads > 1 else ''})"

    def session(self, onnx_path: str | Path) -> ort.InferenceSession:
        """An inference session pinned to `threads` intra-op threads and sequential execution."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def runner(self, onnx_path: str | Path, batch_size: int | None = None) -> Callable[[], object]:
        """One run of the model at `onnx_path` on a fixed random batch (its input's own batch size, or
        `batch_size` where that is symbolic): what `measure` and interleaved comparisons time."""
        sess = self.session(onnx_path)
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else (batch_size or 1) for d in inp.shape]
        feed = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(_NUMPY_TYPES.get(inp.type,
                                                                                                   np.float32))}
        return lambda: sess.run(None, feed)

    def measure(
        self, model: nn.Module | str | Path | ExportedModel, input_shape: tuple[int, ...], precision: str = "fp32",
        batch_size: int = 1, calibration: Sequence[np.ndarray] | None = None,
    ) -> LatencyStats:
        """Latency of one batch of `input_shape` (C, H, W); a module is exported to ONNX first, and the
        ONNX converted to `precision` (int8: static quantization on `calibration` batches); an `ExportedModel`
        gives its own conversion, with the batch fixed."""
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            if isinstance(model, ExportedModel):
                onnx_path = model.fixed(model.at(precision, calibration), batch_size)
            else:
                if isinstance(model, nn.Module):
                    onnx_path = export_onnx(model, input_shape, Path(tmp) / "model.onnx", batch_size)
                    t0 = time.perf_counter()
                else:
                    onnx_path = Path(model)
                if precision != "fp32":
                    onnx_path = convert_precision(onnx_path, Path(tmp) / f"model.{precision}.onnx", precision,
                                                  calibration)
            sess = self.session(onnx_path)
            build_seconds = time.perf_counter() - t0
            inp = sess.get_inputs()[0]
            check_input(onnx_path if isinstance(model, (nn.Module, ExportedModel)) else model, inp.shape,
                        input_shape, batch_size)
            x = np.random.default_rng(0).standard_normal((batch_size, *input_shape))
            feed = {inp.name: x.astype(_NUMPY_TYPES.get(inp.type, np.float32))}
            timings = cpu_rounds(
                lambda: sess.run(None, feed), warmup_s=self.warmup_s, round_runs=self.round_runs,
                min_rounds=self.min_rounds, max_rounds=self.max_rounds, target_cv=self.target_cv,
                max_seconds=self.max_seconds,
            )
        return timings.stats(
            backend=self.name, version=self.version(), device=self.device(), precision=precision,
            batch_size=batch_size, build_seconds=build_seconds, extra={"threads": self.threads},
        )
