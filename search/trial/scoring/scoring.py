"""How a study scores a candidate, in one place that the study's objective and export share.

A `Scoring` prepares a built model, fine-tunes it (resumably, see `evaluators.train.FineTune`), scores it on a
split at the precision its candidate ships at, times it on the study's latency backend, and compares it with
the study's base network where there is one. One implementation per kind of space, registered under the space's
name; export scores with the same object, so its numbers are the study's by construction.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import optuna
import torch.nn as nn

from evaluators.cost import Cost
from evaluators.latency import LatencyBackend, LatencyStats
from evaluators.onnx_model import ExportedModel
from evaluators.precision import calibration_batches, onnx_accuracy
from evaluators.splits import DataBundle, Split
from evaluators.train import FineTune, TrainSettings, evaluate
from registry import Registry
from search.errors import UsageError
from search.latency.predictor import Prediction
from search.recipe.config import StudyConfig
from spaces import Candidate

if TYPE_CHECKING:
    from search.trial.context import StudyContext

CALIBRATION_IMAGES = 64  # int8 calibration: this many training images, in batches of the latency batch size


def train_settings(config: StudyConfig) -> TrainSettings:
    """The evaluator's training settings from the recipe's `train:` section, its device resolved."""
    fields = config.train.model_dump(exclude={"threads", "bn_batches"})
    return TrainSettings(**{**fields, "device": config.train.resolved_device()})


class Scoring:
    """Scores the candidates of one study. This base class scores a network trained as it is built: fp32
    accuracy in PyTorch, latency at the recipe's `latency.precision`; subclasses change what differs."""

    def __init__(self, ctx: StudyContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.data: DataBundle = ctx.data
        self.settings = train_settings(ctx.config)
        self._calibration: list[np.ndarray] | None = None

    @classmethod
    def space_inputs(cls, config: StudyConfig, data: DataBundle) -> dict[str, Any]:
        """Extra constructor arguments the recipe's space needs (none here)."""
        return {}

    @classmethod
    def check_engine(cls, config: StudyConfig, backend: LatencyBackend) -> None:
        """Refuse, before anything is built or trained, what `backend` cannot time for this space (nothing here: the
        backend itself checked `latency.precision`)."""

    def attach(self, study: optuna.Study) -> None:
        """Read (or measure and store) what the scoring needs from the study itself (nothing here)."""

    def precision(self, candidate: Candidate) -> str:
        """The precision the candidate is timed at."""
        return self.config.latency.precision

    def accuracy_precision(self, candidate: Candidate) -> str:
        """The precision the candidate is scored at (fp32: the PyTorch model)."""
        return "fp32"

    def calibration(self) -> list[np.ndarray]:
        """Normalized training batches that calibrate int8 quantization (fixed for the study)."""
        if self._calibration is None:
            batch = self.config.latency.batch_size
            self._calibration = calibration_batches(
                self.data.train, batches=max(1, CALIBRATION_IMAGES // batch), batch_size=batch, seed=self.config.seed
            )
        return self._calibration

    def candidate_fields(self, candidate: Candidate) -> dict[str, Any]:
        """Record fields that follow from the candidate alone (none here)."""
        return {}

    def prepare(self, model: nn.Module, seed: int) -> dict[str, float]:
        """Make a freshly built model ready to fine-tune; returns what that measured (record fields)."""
        return {}

    def check_rungs(self, rungs: list[float]) -> None:
        """Refuse multi-fidelity rungs this kind of candidate cannot be scored at: a network trained from its
        initial weights has no accuracy worth ranking before its fine-tune."""
        if rungs[0] == 0:
            raise UsageError(
                f"search.fidelity.rungs: a first rung of 0 epochs scores a {self.config.space.type} candidate before "
                "any training, at chance accuracy; start the rungs above 0 (0 is for compressed candidates, "
                "scored after adaptive BN)"
            )

    def fine_tune(
        self, model: nn.Module, seed: int, epochs: float | None = None, candidate: Candidate | None = None
    ) -> FineTune:
        """A fine-tune of `model` planned for `epochs` (default `train.epochs`), distilled where the recipe asks for
        it from the space's teacher for `candidate` (without one, the space's teacher)."""
        settings = self.settings if epochs is None else dataclasses.replace(self.settings, epochs=epochs)
        space = self.ctx.space
        teacher = space.teacher if candidate is None else space.teacher_for(candidate)
        return FineTune(model, self.data, settings, seed=seed, teacher=teacher)

    def validation(self) -> Split:
        """The validation images every candidate is scored on: the same `train.max_eval_samples` for all, so their
        accuracies differ by the networks, not by the images drawn."""
        return self.data.val.subset(self.settings.max_eval_samples)

    def accuracy(self, model: nn.Module, exported: ExportedModel, candidate: Candidate, split: Split) -> float:
        """Accuracy on `split` at the candidate's scoring precision (lower precisions: the converted ONNX model
        in ONNX Runtime, the file the latency backend times)."""
        precision = self.accuracy_precision(candidate)
        if precision == "fp32":
            return evaluate(model, split)
        return onnx_accuracy(exported.at(precision, self.calibration()), split, batch_size=64)

    def score(self, exported: ExportedModel, candidate: Candidate, fp32_accuracy: float,
              split: Split) -> dict[str, float]:
        """The record fields of a fine-tuned model's validation score: `accuracy` at its precision, and its
        `accuracy_fp32` when that is another."""
        if self.accuracy_precision(candidate) == "fp32":
            return {"accuracy": fp32_accuracy}
        return {"accuracy": self.accuracy(exported.module, exported, candidate, split), "accuracy_fp32": fp32_accuracy}

    def latency(self, exported: ExportedModel, candidate: Candidate) -> LatencyStats:
        """Latency on the study's backend at the candidate's precision (int8 calibrated on training images)."""
        precision = self.precision(candidate)
        return self.ctx.backend.measure(
            exported, self.data.input_shape, precision, self.config.latency.batch_size,
            calibration=self.calibration() if precision == "int8" else None,
        )

    def versus_base(self, cost: Cost, accuracy: float, stats: LatencyStats | Prediction) -> dict[str, float] | None:
        """The candidate against the study's base network (None: there is none)."""
        return None

    def base_latency_ms(self) -> float | None:
        """The study's base network's measured latency (None: there is no base, or it is not measured yet)."""
        return None


SCORINGS: Registry[type[Scoring]] = Registry("scoring")


def register_scoring(space: str) -> Callable[[type[Scoring]], type[Scoring]]:
    """Class decorator registering how candidates of the space named `space` are scored."""
    return SCORINGS.register(space)


def scoring_for(ctx: StudyContext) -> Scoring:
    """The scoring of the context's space."""
    return SCORINGS[ctx.config.space.type](ctx)
