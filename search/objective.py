"""One trial: sample a candidate, build it, count its cost, fine-tune it, time it on the engine."""

from __future__ import annotations

import time
from typing import Any

import optuna
import torch

from evaluators.cost import measure_cost
from evaluators.data import DataBundle
from evaluators.latency import LatencyBackend
from evaluators.train import TrainSettings, train_model
from search.artifacts import artifact_store, keep_if_on_front
from search.compress_eval import compress_trial
from search.config import StudyConfig
from search.constraints import record as record_constraints
from search.executors.lock import MachineLock
from search.lut import LatencyBudget
from search.suggest import OptunaSuggest
from spaces import Space


def train_settings(config: StudyConfig) -> TrainSettings:
    """The evaluator's training settings from the recipe's `train:` section, its device resolved."""
    fields = config.train.model_dump(exclude={"threads", "bn_batches"})
    return TrainSettings(**{**fields, "device": config.train.resolved_device()})


class Objective:
    """Callable handed to `study.optimize`; returns (accuracy, median latency in ms)."""

    def __init__(self, config: StudyConfig, space: Space, data: DataBundle, backend: LatencyBackend) -> None:
        self.config = config
        self.space = space
        self.data = data
        self.backend = backend
        self.settings = train_settings(config)
        self.artifacts = artifact_store(config.run_dir)
        self.lock = MachineLock()
        self.budget = LatencyBudget.from_config(config, space, backend)
        self.compress = compress_trial(config, space, data, backend)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:
            return self._evaluate(trial)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("error", str(exc))
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise

    def _evaluate(self, trial: optuna.Trial) -> tuple[float, float]:
        cfg = self.config
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        candidate = self.space.sample(OptunaSuggest(trial))
        trial.set_user_attr("candidate", candidate)
        model = self.space.build(candidate)
        seconds["build"] = time.perf_counter() - t0

        t = time.perf_counter()
        cost = measure_cost(model, self.data.input_shape)
        trial.set_user_attr("macs", cost.macs)
        trial.set_user_attr("flops", cost.flops)
        trial.set_user_attr("params", cost.params)
        seconds["cost"] = time.perf_counter() - t
        if self.budget is not None:
            self.budget.check(trial, candidate)

        with self.lock.training() as seconds["train_wait"]:
            t = time.perf_counter()
            torch.manual_seed(cfg.seed + trial.number)
            if self.compress is not None:
                result = self.compress.finetune(trial, model, candidate, self.settings, seed=cfg.seed + trial.number)
            else:
                result = train_model(model, self.data, self.settings, seed=cfg.seed + trial.number)
        trial.set_user_attr("accuracy", result.accuracy)
        trial.set_user_attr("train_loss", result.final_loss)
        seconds["train"] = time.perf_counter() - t

        with self.lock.measuring() as seconds["latency_wait"]:
            t = time.perf_counter()
            if self.compress is not None:
                stats = self.compress.measure(trial, model, candidate)
            else:
                stats = self.backend.measure(
                model, self.data.input_shape, cfg.latency.precision, cfg.latency.batch_size
            )
        latency: dict[str, Any] = stats.as_dict()
        trial.set_user_attr("latency", latency)
        seconds["latency"] = time.perf_counter() - t
        if self.compress is not None:
            self.compress.compare(trial, cost, result.accuracy, stats)

        t = time.perf_counter()
        feasible = record_constraints(
            trial, cfg.constraints, accuracy=result.accuracy, latency_ms=stats.median_ms, params=cost.params
        )
        if feasible:
            keep_if_on_front(trial, model, self.data.input_shape, result.accuracy, stats.median_ms, self.artifacts)
        seconds["artifacts"] = time.perf_counter() - t

        seconds["total"] = time.perf_counter() - t0
        trial.set_user_attr("seconds", seconds)
        return result.accuracy, stats.median_ms
