"""A network exported to ONNX once, with each conversion it needs made once.

One trial scores a model at its precision (ONNX Runtime on the converted graph), times it on a latency
backend and may keep its ONNX file as an artifact. `ExportedModel` holds the fp32 export (dynamic batch)
and the converted files it was asked for, so all three read the same files and nothing is exported or
converted twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch.nn as nn

from evaluators.precision import convert_precision
from evaluators.to_onnx import export_onnx


class ExportedModel:
    """`module` exported to `folder/model.onnx` (fp32, dynamic batch); `at(precision)` and `fixed(path, batch)`
    give converted files, each made on first use and kept in `folder`."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], folder: str | Path) -> None:
        self.module = module
        self.input_shape = tuple(input_shape)
        self.folder = Path(folder)
        self.onnx = export_onnx(module, self.input_shape, self.folder / "model.onnx", dynamic_batch=True)
        self._files: dict[tuple[str, ...], Path] = {}

    def at(self, precision: str, calibration: Sequence[np.ndarray] | None = None, symmetric: bool = False) -> Path:
        """The model at `precision`: fp32 is the export itself, fp16 the converted graph (fp32 inputs and outputs),
        int8 static Q/DQ calibrated on `calibration` (`symmetric`: signed, zero point 0, the form TensorRT runs)."""
        if precision == "fp32":
            return self.onnx
        key = (precision, "symmetric" if symmetric and precision == "int8" else "")
        if key not in self._files:
            dst = self.folder / f"model.{'.'.join(k for k in key if k)}.onnx"
            self._files[key] = convert_precision(self.onnx, dst, precision, calibration, symmetric=bool(key[1]))
        return self._files[key]

    def fixed(self, path: Path, batch_size: int) -> Path:
        """`path` with its batch dimension fixed to `batch_size` (engines plan for static shapes)."""
        import onnx
        from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

        key = (str(path), f"batch{batch_size}")
        if key not in self._files:
            proto = onnx.load(str(path))
            make_dim_param_fixed(proto.graph, "batch", batch_size)
            dst = path.with_name(f"{path.stem}.batch{batch_size}.onnx")
            onnx.save(proto, str(dst))
            self._files[key] = dst
        return self._files[key]
