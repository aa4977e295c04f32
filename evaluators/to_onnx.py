"""Export a network to ONNX, the common entry of every inference engine."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

OPSET = 17


class ExportError(RuntimeError):
    """The model could not be exported to ONNX; the candidate fails with this reason."""


def _pool_matrix(size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
    """(size_out, size_in) averaging matrix of adaptive average pooling: row i averages the inputs
    floor(i·in/out) ... ceil((i+1)·in/out) - 1, as PyTorch's kernel does (built from Python numbers, so a
    trace records it as a constant)."""
    rows = []
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size_in)])
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


class _AdaptivePoolsAsMatMul(TorchFunctionMode):
    """Adaptive average pooling whose output does not divide its input has no ONNX equivalent; for a fixed
    input size it is a linear map on each spatial axis, so it runs (and exports) as two MatMuls instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch protocol
        kwargs = kwargs or {}
        if func is F.adaptive_avg_pool2d:
            x = args[0]
            size = args[1] if len(args) > 1 else kwargs["output_size"]
            out_h, out_w = (size, size) if isinstance(size, int) else size
            h, w = (int(v) for v in x.shape[-2:])
            out_h, out_w = out_h or h, out_w or w
            if h % out_h or w % out_w:
                return _pool_matrix(h, out_h, x) @ x @ _pool_matrix(w, out_w, x).t()
        return func(*args, **kwargs)


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, batch_size: int = 1, dynamic_batch: bool = False
) -> Path:
    """Write `model` (in eval mode) to `path` as ONNX, with a fixed batch unless `dynamic_batch`;
    raises ExportError with the cause. Adaptive average pools that do not divide their input (a VGG head on
    small images) are exported as the equivalent MatMuls for this input size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    x = torch.zeros(batch_size, *input_shape)
    try:
        with warnings.catch_warnings(), _AdaptivePoolsAsMatMul():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (x,), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    return path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (engine and table caches are keyed by it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
