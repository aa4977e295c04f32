"""Lower precision at the ONNX level: fp16 conversion and int8 static quantization (QDQ).

The ONNX Runtime backend times the converted model, and `onnx_accuracy` scores it, so a
candidate's accuracy is measured at the precision it will ship at.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from evaluators.splits import Split


class PrecisionError(RuntimeError):
    """A model that cannot be converted to the requested precision."""


class _Batches:
    """onnxruntime's CalibrationDataReader over a list of input arrays."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self._it = iter([{input_name: b.astype(np.float32)} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - part of the reader protocol
        pass


def calibration_batches(split: Split, batches: int = 8, batch_size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """A few normalized training batches for int8 calibration."""
    sub = split.subset(batches * batch_size, seed)
    return [x.numpy() for x, _ in sub.batches(batch_size)]


def convert_precision(
    src: str | Path, dst: str | Path, precision: str, calibration: Iterable[np.ndarray] | None = None,
    symmetric: bool = False,
) -> Path:
    """Write `src` at `precision` to `dst`: fp32 is copied, fp16 keeps fp32 inputs and outputs,
    int8 is static QDQ quantization (per-channel weights) calibrated on `calibration` batches (`symmetric`: see
    `quantize_int8`)."""
    import onnx

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if precision == "fp32":
            dst.write_bytes(src.read_bytes())
        elif precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
        elif precision == "int8":
            quantize_int8(src, dst, calibration, symmetric=symmetric)
        else:
            raise PrecisionError(f"unknown precision {precision!r}; expected fp32, fp16 or int8")
    except PrecisionError:
        raise
    except Exception as exc:
        raise PrecisionError(f"{precision} conversion failed: {type(exc).__name__}: {exc}") from exc
    return dst


def quantize_int8(
    src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray] | None, symmetric: bool = False
) -> Path:
    """Static int8 QDQ quantization with per-channel weights, calibrated on `calibration` batches (random normal
    batches when None). `symmetric` gives the form TensorRT executes: signed int8 activations with zero point 0
    and biases left in float; otherwise activations are unsigned, as ONNX Runtime's CPU kernels prefer."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    if calibration is None:
        dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal(dims).astype(np.float32) for _ in range(4)]
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False} if symmetric else {}
    logging.getLogger("root").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(dst), _Batches(input_name, list(calibration)),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True, extra_options=extra,
        )
    return Path(dst)


def onnx_accuracy(onnx_path: str | Path, split: Split, batch_size: int = 1, threads: int = 0) -> float:
    """Top-1 accuracy of an ONNX model run by ONNX Runtime on the CPU over `split`.

    `batch_size` must match the model's batch dimension unless it was exported with a dynamic batch.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for x, y in split.batches(batch_size):
        x_np = x.numpy()
        if len(x_np) < batch_size:
            x_np = np.concatenate([x_np, np.zeros((batch_size - len(x_np), *x_np.shape[1:]), np.float32)])
        logits = sess.run(None, {name: x_np})[0][: len(y)]
        correct += int((logits.argmax(1) == y.numpy()).sum())
    return correct / max(len(split), 1)
