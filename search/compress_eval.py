"""How a compressed candidate is scored: adaptive BN, a short fine-tune distilled from the base, accuracy at
the candidate's precision, latency at that precision, and every number set against the study's base."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch.nn as nn

from evaluators.cost import Cost
from evaluators.data import DataBundle
from evaluators.latency import LatencyBackend, LatencyStats
from evaluators.onnx_export import export_onnx
from evaluators.precision import calibration_batches, convert_precision, onnx_accuracy
from evaluators.train import TrainResult, TrainSettings, evaluate, placed, recalibrate_bn, train_model
from search.base import recorded_base
from search.config import StudyConfig
from search.errors import UsageError
from spaces import Space

CALIBRATION_IMAGES = 64


def precision_accuracy(
    model: nn.Module, data: DataBundle, precision: str, calibration: list[np.ndarray], max_images: int | None,
    seed: int,
) -> float:
    """Validation accuracy of `model` converted to `precision` (ONNX, dynamic batch) and run by ONNX Runtime."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, data.input_shape, Path(tmp) / "model.onnx", dynamic_batch=True)
        path = convert_precision(path, Path(tmp) / f"model.{precision}.onnx", precision, calibration)
        return onnx_accuracy(path, data.val.subset(max_images, seed), batch_size=64)


def versus_base(base: dict[str, Any], cost: Cost, accuracy: float, latency_ms: float) -> dict[str, float]:
    """A candidate against the base: parameter compression (×), FLOPs reduction (share), measured speedup (×),
    accuracy change (points of the [0, 1] scale)."""
    return {
        "compression": base["params"] / max(cost.params, 1),
        "flops_reduction": 1.0 - cost.flops / max(base["flops"], 1),
        "speedup": base["latency_ms"] / latency_ms if latency_ms > 0 else float("nan"),
        "accuracy_change": accuracy - base["accuracy"],
    }


class CompressTrial:
    """The compression-specific steps of one trial, for a space that compresses a trained base."""

    def __init__(self, config: StudyConfig, space: Space, data: DataBundle, backend: LatencyBackend) -> None:
        self.config = config
        self.space = space
        self.data = data
        self.backend = backend
        unsupported = [p for p in config.space.precision if p not in backend.precisions]
        if unsupported:
            raise UsageError(
                f"space.precision: the {backend.name} backend on {backend.device()} runs "
                f"{', '.join(backend.precisions)}, not {', '.join(unsupported)}"
            )
        lat_batch = config.latency.batch_size
        self.calibration = calibration_batches(
            data.train, batches=max(1, CALIBRATION_IMAGES // lat_batch), batch_size=lat_batch, seed=config.seed
        )
        self.base: dict[str, Any] | None = None

    def finetune(
        self, trial: optuna.Trial, model: nn.Module, candidate: dict[str, Any], settings: TrainSettings, seed: int
    ) -> TrainResult:
        """Recalibrate BatchNorm (accuracy recorded as `accuracy_adaptive_bn`), fine-tune with distillation
        from the base, and score at the candidate's precision (the fp32 score kept as `accuracy_fp32`)."""
        val = self.data.val.subset(settings.max_eval_samples, seed)
        with placed(settings.device, model):
            recalibrate_bn(model, self.data.train, self.config.train.bn_batches, settings.batch_size, seed)
            trial.set_user_attr("accuracy_adaptive_bn", evaluate(model, val))
        result = train_model(model, self.data, settings, seed=seed, teacher=self.space.base)
        precision = candidate.get("precision", "fp32")
        if precision != "fp32":
            trial.set_user_attr("accuracy_fp32", result.accuracy)
            result.accuracy = precision_accuracy(
                model, self.data, precision, self.calibration, settings.max_eval_samples, seed
            )
        return result

    def measure(self, trial: optuna.Trial, model: nn.Module, candidate: dict[str, Any]) -> LatencyStats:
        """The candidate's latency at its precision (int8 calibrated on training images); the first trial of
        the study also measures the base (stored as the study's `base` attribute)."""
        if self.base is None:
            self.base = recorded_base(
                trial.study, self.config, self.data, self.backend, self.space.base, self.space.base_spec
            )
        precision = candidate.get("precision", "fp32")
        return self.backend.measure(
            model, self.data.input_shape, precision, self.config.latency.batch_size,
            calibration=self.calibration if precision == "int8" else None,
        )

    def compare(self, trial: optuna.Trial, cost: Cost, accuracy: float, stats: LatencyStats) -> None:
        """Store `vs_base` on the trial: compression, FLOPs reduction, speedup, accuracy change."""
        if self.base is not None:
            trial.set_user_attr("vs_base", versus_base(self.base, cost, accuracy, stats.median_ms))


def compress_trial(
    config: StudyConfig, space: Space, data: DataBundle, backend: LatencyBackend
) -> CompressTrial | None:
    """The compression steps for a space holding a base network; None for other spaces."""
    return CompressTrial(config, space, data, backend) if hasattr(space, "base_spec") else None
