"""One trial: sample a candidate, build it, count its cost, fine-tune it, score it and time it on the engine.

Every space goes through the same steps; what differs between kinds of space is the study's `Scoring`.
The model is exported to ONNX once after its fine-tune; the accuracy at a lower precision, the latency
backend and the artifact store all read that export. A multi-fidelity study scores in rungs instead
(`search.trial.rungs`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import optuna
import torch
import torch.nn as nn

from evaluators.cost import Cost, measure_cost
from evaluators.latency import LatencyStats
from evaluators.onnx_model import ExportedModel
from search.latency.gate import LatencyGate
from search.latency.predictor import Prediction
from search.results.artifacts import artifact_store, keep_if_on_front
from search.results.record import TrialRecord
from search.trial.checkpoints import root_number
from search.trial.constraints import apply_constraints
from search.trial.context import StudyContext
from search.trial.locks import MachineLock
from search.trial.scoring import scoring_for
from search.trial.suggest import OptunaSuggest
from spaces import Candidate


class Stopped(optuna.TrialPruned):
    """A multi-fidelity candidate stopped below the top rung, told to the sampler as pruned (`report: top`)."""


class Objective:
    """Callable handed to `study.optimize`; returns (accuracy, median latency in ms)."""

    def __init__(self, ctx: StudyContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.space = ctx.space
        self.backend = ctx.backend
        self.scoring = scoring_for(ctx)
        self.artifacts = artifact_store(ctx.config.run_dir)
        self.lock = MachineLock()
        self.predictor = ctx.predictor
        self.gate = LatencyGate(ctx.config, ctx.predictor) if ctx.predictor is not None else None
        self.attached = False

    def __call__(self, trial: optuna.Trial, candidate: Candidate | None = None) -> tuple[float, float]:
        """Evaluate the trial's candidate: `candidate` where the sampler already drew it on this trial (the Ray
        driver), else drawn here."""
        record = TrialRecord()
        try:
            return self._evaluate(trial, record, candidate)
        except Stopped:
            raise
        except optuna.TrialPruned as exc:
            record.save(trial, error=str(exc))
            raise
        except Exception as exc:
            record.save(trial, error=f"{type(exc).__name__}: {exc}")
            raise
        except KeyboardInterrupt:
            record.save(trial, error="interrupted (Ctrl-C or kill)")
            raise

    def _evaluate(self, trial: optuna.Trial, record: TrialRecord, candidate: Candidate | None) -> tuple[float, float]:
        seed = self.config.seed + root_number(trial)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        if candidate is None:
            candidate = self.space.sample(OptunaSuggest(trial))
        record.save(trial, candidate=candidate, **self.scoring.candidate_fields(candidate))
        torch.manual_seed(seed)  # a network trained from scratch starts from the same weights in any process
        model = self.space.build(candidate)
        seconds["build"] = time.perf_counter() - t0

        t = time.perf_counter()
        cost = measure_cost(model, self.ctx.data.input_shape)
        record.save(trial, macs=cost.macs, flops=cost.flops, params=cost.params)
        seconds["cost"] = time.perf_counter() - t
        if self.predictor is not None:
            prediction = self.predictor.predict(candidate)
            record.save(trial, **self.predictor.record(prediction))
            missed = self.gate.missed(prediction)
            if missed:
                return self.screen(trial, record, prediction, missed, cost, seconds, t0)

        with tempfile.TemporaryDirectory() as tmp:
            exported, stats = self.score(trial, record, model, candidate, cost, seed, Path(tmp), seconds)
            versus = self.scoring.versus_base(cost, record.accuracy, stats)
            if versus is not None:
                record.save(trial, vs_base=versus)
                self.check_prediction(trial, record, versus)
            t = time.perf_counter()
            latency_ms = self.front_ms(stats, versus)
            feasible = apply_constraints(trial, record, self.config.constraints, accuracy=record.accuracy,
                                         latency_ms=latency_ms, params=cost.params,
                                         base_latency_ms=self.base_ms(stats), budget_ms=self.config.latency.budget_ms)
            if feasible and record.at_top and exported is not None:
                keep_if_on_front(trial, exported, record.accuracy, latency_ms, self.artifacts)
            seconds["artifacts"] = time.perf_counter() - t

        seconds["total"] = time.perf_counter() - t0
        record.save(trial, seconds={**record.seconds, **seconds})
        return record.accuracy, latency_ms

    def front_ms(self, stats: LatencyStats | Prediction, versus: dict[str, float] | None) -> float:
        """The latency a trial is ranked by: a prediction's ms; a speed-up timed interleaved with the base, as the
        base's recorded ms over that speed-up (so a drift of the machine since the base was measured does not move
        the front); else the measured median."""
        if isinstance(stats, Prediction):
            return stats.ms
        base = self.scoring.base_latency_ms()
        if versus is not None and base is not None and isinstance(stats.extra.get("interleaved"), dict):
            return base / versus["speedup"]
        return stats.median_ms

    def check_prediction(self, trial: optuna.Trial, record: TrialRecord, versus: dict[str, float]) -> None:
        """Where the table predicted this candidate and the engine measured it, record how far apart they are
        (`latency_check`) and say so when that is more than the table's threshold."""
        predicted, measured = record.predicted_speedup, versus.get("speedup")
        if self.predictor is None or predicted is None or measured is None or record.latency is None:
            return
        error = 100 * (predicted - measured) / measured
        threshold = self.predictor.table.check.threshold if self.predictor.table.check else 10.0
        record.save(trial, latency_check={"predicted_speedup": predicted, "measured_speedup": measured,
                                          "error_percent": round(error, 2), "over_threshold": abs(error) > threshold})

    def base_ms(self, stats: LatencyStats | Prediction) -> float | None:
        """The base's latency to set `stats` against: its prediction where `stats` is a prediction, else its
        measurement."""
        if isinstance(stats, Prediction):
            return None if self.predictor is None else self.predictor.base_ms()
        return self.scoring.base_latency_ms()

    def screen(self, trial: optuna.Trial, record: TrialRecord, prediction: Prediction, missed: str, cost: Cost,
               seconds: dict[str, float], t0: float) -> tuple[float, float]:
        """Complete a candidate whose prediction misses a latency limit without fine-tuning it: infeasible, so the
        sampler learns from it and the front never shows it; its values are accuracy 0 and the predicted ms."""
        record.save(trial, screened=missed)
        apply_constraints(trial, record, self.config.constraints, accuracy=0.0, latency_ms=prediction.ms,
                          params=cost.params, base_latency_ms=self.predictor.base_ms(),
                          budget_ms=self.config.latency.budget_ms)
        seconds["total"] = time.perf_counter() - t0
        record.save(trial, accuracy=0.0, seconds={**record.seconds, **seconds})
        return 0.0, prediction.ms

    def score(
        self, trial: optuna.Trial, record: TrialRecord, model: nn.Module, candidate: Candidate, cost: Cost,
        seed: int, tmp: Path, seconds: dict[str, float],
    ) -> tuple[ExportedModel | None, LatencyStats | Prediction]:
        """Fine-tune the candidate, score it at its precision and time it; returns its export (None where there is
        none to keep) and latency."""
        scoring = self.scoring
        with self.lock.training() as seconds["train_wait"]:
            t = time.perf_counter()
            torch.manual_seed(seed)
            record.save(trial, **scoring.prepare(model, seed))
            tune = scoring.fine_tune(model, seed, candidate=candidate)
            tune.run_to(self.config.train.epochs)
            exported = ExportedModel(model, self.ctx.data.input_shape, tmp)
            record.save(trial, **scoring.score(exported, candidate, tune.accuracy(), scoring.validation()),
                        train_loss=tune.loss)
            seconds["train"] = time.perf_counter() - t
        return exported, self.measure(trial, record, exported, candidate, seconds)

    def measure(self, trial: optuna.Trial, record: TrialRecord, exported: ExportedModel, candidate: Candidate,
                seconds: dict[str, float]) -> LatencyStats:
        """Time the export alone on this machine (the first trial of a process also reads the study's base)."""
        with self.lock.measuring() as seconds["latency_wait"]:
            t = time.perf_counter()
            self.attach(trial)
            stats = self.scoring.latency(exported, candidate)
            seconds["latency"] = time.perf_counter() - t
        record.save(trial, latency=stats.as_dict())
        return stats


    def attach(self, trial: optuna.Trial) -> None:
        """Read what the scoring needs from the study (the base's record) once per process."""
        if not self.attached:
            self.scoring.attach(trial.study)
            self.attached = True
