"""Latency measured on real inference engines, behind one small contract."""

from __future__ import annotations

from evaluators.latency import onnxruntime_backend, tensorrt_backend, torch_backend  # noqa: F401  (register them)
from evaluators.latency.base import (
    AVAILABILITY,
    BACKENDS,
    PRECISIONS,
    SETTINGS,
    BackendUnavailable,
    LatencyBackend,
    LatencyStats,
    UnsupportedRequest,
    register_backend,
)

AUTO_ORDER = ("tensorrt", "onnxruntime")


def resolve_backend_name(name: str) -> str:
    """Map `auto` to the first backend that can run here (TensorRT on a GPU, else ONNX Runtime)."""
    if name != "auto":
        return name
    for candidate in AUTO_ORDER:
        if candidate in BACKENDS and AVAILABILITY[candidate]() is None:
            return candidate
    raise BackendUnavailable(
        "no latency backend can run here: pip install onnxruntime (CPU), or on an NVIDIA GPU "
        "pip install --extra-index-url https://pypi.nvidia.com tensorrt"
    )


def get_backend(name: str, **options: object) -> LatencyBackend:
    """Construct a backend by name (`auto` resolved); raises BackendUnavailable saying what is missing, and
    `registry.UnknownName` for a name no backend is registered under."""
    resolved = resolve_backend_name(name)
    factory = BACKENDS[resolved]
    why = AVAILABILITY[resolved]()
    if why:
        raise BackendUnavailable(why)
    return factory(**options)


def configured_backend(name: str, **settings: object) -> LatencyBackend:
    """Construct a backend by name (`auto` resolved) from common settings (`threads`, `max_seconds`, `target_cv`,
    `cuda_graph`, `cache_dir`): each backend takes those it registered, under its own keyword."""
    resolved = resolve_backend_name(name)
    takes = SETTINGS.get(resolved, {})
    return get_backend(resolved, **{keyword: settings[s] for s, keyword in takes.items() if s in settings})


__all__ = [
    "AUTO_ORDER", "AVAILABILITY", "BACKENDS", "PRECISIONS", "SETTINGS", "BackendUnavailable", "LatencyBackend",
    "LatencyStats", "UnsupportedRequest", "configured_backend", "get_backend", "register_backend", "resolve_backend_name",
]
