"""Export a network to ONNX, the common entry of every inference engine."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn

OPSET = 17


class ExportError(RuntimeError):
    """The model could not be exported to ONNX; the candidate fails with this reason."""


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, batch_size: int = 1, dynamic_batch: bool = False
) -> Path:
    """Write `model` (in eval mode) to `path` as ONNX, with a fixed batch unless `dynamic_batch`;
    raises ExportError with the cause."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    x = torch.zeros(batch_size, *input_shape)
    try:
        with warnings.catch_warnings():
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
