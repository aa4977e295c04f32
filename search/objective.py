"""One trial: sample a candidate, build it, count its cost, fine-tune it, score it and time it on the engine.

Every space goes through the same steps; what differs between kinds of space is the study's `Scoring`.
The model is exported to ONNX once; the accuracy at a lower precision, the latency backend and the artifact
store all read that export.
"""

from __future__ import annotations

import tempfile
import time

import optuna
import torch

from evaluators.cost import measure_cost
from evaluators.exported import ExportedModel
from search.artifacts import artifact_store, keep_if_on_front
from search.budget import LatencyBudget
from search.constraints import apply_constraints
from search.context import StudyContext
from search.locks import MachineLock
from search.record import TrialRecord
from search.scoring import scoring_for
from search.suggest import OptunaSuggest


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
        self.budget = LatencyBudget.from_config(ctx.config, ctx.space, ctx.backend)
        self.attached = False

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        record = TrialRecord()
        try:
            return self._evaluate(trial, record)
        except optuna.TrialPruned as exc:
            record.save(trial, error=str(exc))
            raise
        except Exception as exc:
            record.save(trial, error=f"{type(exc).__name__}: {exc}")
            raise

    def _evaluate(self, trial: optuna.Trial, record: TrialRecord) -> tuple[float, float]:
        cfg, scoring = self.config, self.scoring
        seed = cfg.seed + trial.number
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        candidate = self.space.sample(OptunaSuggest(trial))
        record.save(trial, candidate=candidate)
        model = self.space.build(candidate)
        seconds["build"] = time.perf_counter() - t0

        t = time.perf_counter()
        cost = measure_cost(model, self.ctx.data.input_shape)
        record.save(trial, macs=cost.macs, flops=cost.flops, params=cost.params)
        seconds["cost"] = time.perf_counter() - t
        if self.budget is not None:
            prediction = self.budget.predict(candidate)
            record.save(trial, predicted_latency_ms=prediction.ms)
            if prediction.missing:
                record.save(trial, latency_table_missing=prediction.missing)
            self.budget.enforce(prediction)

        with tempfile.TemporaryDirectory() as tmp:
            with self.lock.training() as seconds["train_wait"]:
                t = time.perf_counter()
                torch.manual_seed(seed)
                record.save(trial, **scoring.prepare(model, seed))
                tune = scoring.fine_tune(model, seed)
                tune.run_to(cfg.train.epochs)
                exported = ExportedModel(model, self.ctx.data.input_shape, tmp)
                record.save(trial, **scoring.score(exported, candidate, tune.accuracy(), scoring.validation(seed)),
                            train_loss=tune.loss)
                seconds["train"] = time.perf_counter() - t

            with self.lock.measuring() as seconds["latency_wait"]:
                t = time.perf_counter()
                if not self.attached:
                    scoring.attach(trial.study)
                    self.attached = True
                stats = scoring.latency(exported, candidate)
                seconds["latency"] = time.perf_counter() - t
            record.save(trial, latency=stats.as_dict())
            versus = scoring.versus_base(cost, record.accuracy, stats.median_ms)
            if versus is not None:
                record.save(trial, vs_base=versus)

            t = time.perf_counter()
            feasible = apply_constraints(trial, record, cfg.constraints, accuracy=record.accuracy,
                                         latency_ms=stats.median_ms, params=cost.params)
            if feasible:
                keep_if_on_front(trial, exported, record.accuracy, stats.median_ms, self.artifacts)
            seconds["artifacts"] = time.perf_counter() - t

        seconds["total"] = time.perf_counter() - t0
        record.save(trial, seconds=seconds)
        return record.accuracy, stats.median_ms
