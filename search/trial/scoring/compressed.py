"""Scoring of compressed candidates: the base network prepared once, adaptive BN before each fine-tune (which is
distilled from the base), accuracy and latency at the candidate's own precision, and every number set against
the study's base."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any, Callable

import optuna
import torch.nn as nn

from evaluators.cost import Cost
from evaluators.latency import LatencyBackend, LatencyStats
from evaluators.latency.timing import interleaved
from evaluators.onnx_model import ExportedModel
from evaluators.splits import DataBundle
from evaluators.train import evaluate, placed, recalibrate_bn
from search.errors import UsageError
from search.latency.predictor import Prediction
from search.recipe.config import StudyConfig
from search.trial.scoring.base_network import prepare_base, recorded_base
from search.trial.scoring.scoring import Scoring, register_scoring
from search.trial.scoring.sparsity import sparsity_record, sparsity_train
from spaces import Candidate

if TYPE_CHECKING:
    from search.trial.context import StudyContext


def versus_base(base: dict[str, Any], cost: Cost, accuracy: float,
                stats: LatencyStats | Prediction) -> dict[str, float]:
    """A candidate against the base: parameter compression (×), FLOPs reduction (share), measured speedup (×),
    accuracy change (points of the [0, 1] scale). The speed-up is the one timed interleaved with the base where the
    backend could (`interleaved` in the stats, with its per-round range), the table's predicted speed-up for a
    candidate that was never timed, else the ratio of the two medians."""
    paired = None if isinstance(stats, Prediction) else stats.extra.get("interleaved")
    if isinstance(stats, Prediction):
        speed = {"speedup": float(stats.speedup)}
    elif isinstance(paired, dict):
        speed = {"speedup": paired["speedup"], "speedup_low": paired["low"], "speedup_high": paired["high"]}
    else:
        speed = {"speedup": base["latency_ms"] / stats.median_ms if stats.median_ms > 0 else float("nan")}
    return {
        "compression": base["params"] / max(cost.params, 1),
        "flops_reduction": 1.0 - cost.flops / max(base["flops"], 1),
        **speed,
        "accuracy_change": accuracy - base["accuracy"],
    }


@register_scoring("compress")
class CompressedScoring(Scoring):
    """A `compress` candidate: cut from the trained base, BatchNorm recalibrated, fine-tuned distilled from the
    base, scored and timed at its own precision (fp16 / int8: the converted ONNX model in ONNX Runtime)."""

    def __init__(self, ctx: StudyContext) -> None:
        super().__init__(ctx)
        self.check_engine(ctx.config, ctx.backend)
        self.base: dict[str, Any] | None = None
        self._base_runner: Callable[[], object] | None = None
        self._base_folder: tempfile.TemporaryDirectory | None = None

    @classmethod
    def check_engine(cls, config: StudyConfig, backend: LatencyBackend) -> None:
        """Every precision of `space.precision` must be one the backend times."""
        unsupported = [p for p in config.space.precision if p not in backend.precisions]
        if unsupported:
            raise UsageError(
                f"space.precision: the {backend.name} backend on {backend.device()} runs "
                f"{', '.join(backend.precisions)}, not {', '.join(unsupported)}"
            )

    @classmethod
    def space_inputs(cls, config: StudyConfig, data: DataBundle) -> dict[str, Any]:
        """The trained base network (from its checkpoint, or trained once in the study), a labelled batch
        for the `taylor` importance, and with `space.base.sparsity` the base sparsity-trained at each λ."""
        base = prepare_base(config, data)
        sparse = sparsity_train(config, data, base.model) if config.space.base.sparsity is not None else {}
        return {"base": base.model, "checkpoint": base.checkpoint, "calibration": base.calibration, "sparse": sparse}

    def attach(self, study: optuna.Study) -> None:
        """The study's `base` attribute (and `sparsity`, with sparsity-trained bases), measured and stored by the
        first process that needs it."""
        if self.base is None:
            space = self.ctx.space
            self.base = recorded_base(study, self.config, self.data, self.ctx.backend, space.base, space.base_spec)
            if space.sparse and "sparsity" not in study.user_attrs:
                study.set_user_attr(
                    "sparsity", sparsity_record(self.config, space.base, space.sparse, self.validation())
                )

    def candidate_fields(self, candidate: Candidate) -> dict[str, Any]:
        """`base_l1`: the λ of the sparsity-trained base the candidate was cut from (None without sparsity)."""
        l1 = candidate.get("base", {}).get("l1")
        return {} if l1 is None else {"base_l1": l1}

    def precision(self, candidate: Candidate) -> str:
        return candidate.get("precision", "fp32")

    accuracy_precision = precision

    def check_rungs(self, rungs: list[float]) -> None:
        """Any rungs: a first rung of 0 epochs scores the candidate after adaptive BN alone."""

    def prepare(self, model: nn.Module, seed: int) -> dict[str, float]:
        """Adaptive BN: BatchNorm statistics re-estimated on training batches; returns the accuracy right after
        it (`accuracy_adaptive_bn`), before any fine-tune."""
        with placed(self.settings.device, model):
            recalibrate_bn(model, self.data.train, self.config.train.bn_batches, self.settings.batch_size, seed)
            return {"accuracy_adaptive_bn": evaluate(model, self.validation())}

    def versus_base(self, cost: Cost, accuracy: float, stats: LatencyStats | Prediction) -> dict[str, float] | None:
        return None if self.base is None else versus_base(self.base, cost, accuracy, stats)

    def latency(self, exported: ExportedModel, candidate: Candidate) -> LatencyStats:
        """The candidate's latency on the study's backend; where the backend runs ONNX files itself (ONNX Runtime),
        also its speed-up timed interleaved with the base in this process (`extra["interleaved"]`), so a drift of
        the machine between the base's measurement and this one does not enter the speed-up."""
        stats = super().latency(exported, candidate)
        runner = getattr(self.ctx.backend, "runner", None)
        if runner is None or self.base is None:
            return stats
        batch, precision = self.config.latency.batch_size, self.precision(candidate)
        calibration = self.calibration() if precision == "int8" else None
        path = exported.fixed(exported.at(precision, calibration), batch)
        if self._base_runner is None:  # exported and given a session once per process
            self._base_folder = tempfile.TemporaryDirectory()
            base = ExportedModel(self.ctx.space.base, self.data.input_shape, self._base_folder.name)
            self._base_runner = runner(base.fixed(base.onnx, batch), batch)
        runs = max(10, min(100, int(0.05 / max(stats.median_ms / 1e3, 1e-6))))
        paired = interleaved({"base": self._base_runner, "candidate": runner(path, batch)}, "base",
                             rounds=5, runs=runs)[1]
        stats.extra["interleaved"] = {"speedup": paired.speedup, "low": paired.speedup_low,
                                      "high": paired.speedup_high, "rounds": paired.rounds, "runs": runs,
                                      "base": "fp32"}
        return stats

    def base_latency_ms(self) -> float | None:
        return None if self.base is None else float(self.base["latency_ms"])
