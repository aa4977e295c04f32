"""The latency-backend contract: what a measurement reports and how backends are found by name."""

from __future__ import annotations

import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch.nn as nn

from evaluators.onnx_model import ExportedModel
from registry import Registry

PRECISIONS = ("fp32", "fp16", "int8")


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here; the message says what is missing and how to get it."""


class UnsupportedRequest(ValueError):
    """The backend runs, but not what was asked of it (a precision, an input kind); the message says what would."""


@dataclass
class LatencyStats:
    """One model's latency on one engine: robust statistics over many timed runs, in milliseconds."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cv: float
    runs: int
    warmup_runs: int
    backend: str
    backend_version: str
    device: str
    precision: str
    batch_size: int
    build_seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(
    times_ms: Sequence[float], *, warmup_runs: int, backend: str, version: str, device: str, precision: str,
    batch_size: int, build_seconds: float = 0.0, extra: dict[str, object] | None = None,
    headline_ms: float | None = None,
) -> LatencyStats:
    """Turn raw per-run timings into `LatencyStats`; the median is `headline_ms` when given (a backend that
    times in rounds reports the median of round medians), else the median of all runs."""
    ordered = sorted(times_ms)
    n = len(ordered)
    mean = statistics.fmean(ordered)
    std = statistics.pstdev(ordered) if n > 1 else 0.0
    return LatencyStats(
        median_ms=statistics.median(ordered) if headline_ms is None else headline_ms,
        p90_ms=ordered[min(n - 1, int(0.9 * n))],
        p99_ms=ordered[min(n - 1, int(0.99 * n))],
        mean_ms=mean,
        cv=std / mean if mean > 0 else 0.0,
        runs=n,
        warmup_runs=warmup_runs,
        backend=backend,
        backend_version=version,
        device=device,
        precision=precision,
        batch_size=batch_size,
        build_seconds=build_seconds,
        extra=extra or {},
    )


def check_input(path: str | Path, declared: Sequence[object], input_shape: tuple[int, ...], batch_size: int) -> None:
    """Refuse a request whose batch or image shape contradicts the fixed dimensions of an ONNX input
    (`declared`: its dimensions, anything but an int standing for a free one)."""
    wanted = (batch_size, *input_shape)
    if len(declared) != len(wanted) or any(isinstance(d, int) and d != w for d, w in zip(declared, wanted)):
        shown = ["?" if not isinstance(d, int) else d for d in declared]
        raise UnsupportedRequest(
            f"{path}: its input has shape {shown}, which does not fit batch {batch_size} of {list(input_shape)}; "
            "pass the batch size and input shape the model was exported with"
        )


def onnx_input_dims(path: str | Path) -> list[int | None]:
    """The first input's dimensions of an ONNX file (None where symbolic)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


# Vector extensions that decide how fast a CPU runs fp32 and int8 kernels, as /proc/cpuinfo names them.
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def cpu_name() -> str:
    """The CPU as latencies depend on it: the kernel's model name, family and model, and its vector extensions.
    A virtual machine may call CPUs of two generations "AMD EPYC" alike, and one of them may run int8
    twice as fast as the other, so studies and latency tables must not take one for the other."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        block = ""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
    name = fields.get("model name") or platform.processor() or platform.machine()
    parts = [name]
    if "cpu family" in fields and "model" in fields:
        parts.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    simd = [f for f in SIMD_FLAGS if f in flags]
    if simd:
        parts.append("+".join(simd))
    return ", ".join(parts)


class LatencyBackend(Protocol):
    """Measures a network (an `nn.Module`, an ONNX file, or an `ExportedModel` whose files it reuses) on one
    engine and device."""

    name: str
    precisions: tuple[str, ...]

    def version(self) -> str: ...

    def device(self) -> str: ...

    def measure(
        self, model: nn.Module | str | Path | ExportedModel, input_shape: tuple[int, ...], precision: str = "fp32",
        batch_size: int = 1, calibration: Sequence[np.ndarray] | None = None,
    ) -> LatencyStats: ...


BackendFactory = Callable[..., LatencyBackend]
BACKENDS: Registry[BackendFactory] = Registry("latency backend")
AVAILABILITY: dict[str, Callable[[], str | None]] = {}  # keyed as BACKENDS
SETTINGS: dict[str, dict[str, str]] = {}  # keyed as BACKENDS: common setting -> the backend's keyword for it


def register_backend(
    name: str, unavailable: Callable[[], str | None], settings: dict[str, str] | None = None
) -> Callable[[BackendFactory], BackendFactory]:
    """Register a backend; `unavailable()` returns why it cannot run here, or None when it can; `settings` maps
    the common settings it takes (`threads`, `max_seconds`, `target_cv`, `cuda_graph`, `cache_dir`) to its
    constructor's keywords."""

    def wrap(factory: BackendFactory) -> BackendFactory:
        BACKENDS[name] = factory
        AVAILABILITY[name] = unavailable
        SETTINGS[name] = dict(settings or {})
        return factory

    return wrap
