"""The latency-backend contract: what a measurement reports and how backends are found by name."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch.nn as nn

PRECISIONS = ("fp32", "fp16", "int8")


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here; the message says what is missing and how to get it."""


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
) -> LatencyStats:
    """Turn raw per-run timings into `LatencyStats`."""
    ordered = sorted(times_ms)
    n = len(ordered)
    mean = statistics.fmean(ordered)
    std = statistics.pstdev(ordered) if n > 1 else 0.0
    return LatencyStats(
        median_ms=statistics.median(ordered),
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


class LatencyBackend(Protocol):
    """Measures a network (an `nn.Module` or an ONNX file) on one engine and device."""

    name: str

    def version(self) -> str: ...

    def device(self) -> str: ...

    def measure(
        self, model: nn.Module | str | Path, input_shape: tuple[int, ...], precision: str = "fp32"
    ) -> LatencyStats: ...


BackendFactory = Callable[..., LatencyBackend]
BACKENDS: dict[str, BackendFactory] = {}
AVAILABILITY: dict[str, Callable[[], str | None]] = {}


def register_backend(
    name: str, unavailable: Callable[[], str | None]
) -> Callable[[BackendFactory], BackendFactory]:
    """Register a backend; `unavailable()` returns why it cannot run here, or None when it can."""

    def wrap(factory: BackendFactory) -> BackendFactory:
        BACKENDS[name] = factory
        AVAILABILITY[name] = unavailable
        return factory

    return wrap
