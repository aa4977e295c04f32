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
from search.config import StudyConfig
from search.suggest import OptunaSuggest
from spaces import Space


def train_settings(config: StudyConfig) -> TrainSettings:
    """The evaluator's training settings from the recipe's `train:` section."""
    fields = config.train.model_dump(exclude={"threads"})
    return TrainSettings(**fields)


class Objective:
    """Callable handed to `study.optimize`; returns (accuracy, median latency in ms)."""

    def __init__(self, config: StudyConfig, space: Space, data: DataBundle, backend: LatencyBackend) -> None:
        self.config = config
        self.space = space
        self.data = data
        self.backend = backend
        self.settings = train_settings(config)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:
            return self._evaluate(trial)
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

        t = time.perf_counter()
        torch.manual_seed(cfg.seed + trial.number)
        result = train_model(model, self.data, self.settings, seed=cfg.seed + trial.number)
        trial.set_user_attr("accuracy", result.accuracy)
        trial.set_user_attr("train_loss", result.final_loss)
        seconds["train"] = time.perf_counter() - t

        t = time.perf_counter()
        stats = self.backend.measure(model, self.data.input_shape, cfg.latency.precision, cfg.latency.batch_size)
        latency: dict[str, Any] = stats.as_dict()
        trial.set_user_attr("latency", latency)
        seconds["latency"] = time.perf_counter() - t

        seconds["total"] = time.perf_counter() - t0
        trial.set_user_attr("seconds", seconds)
        return result.accuracy, stats.median_ms
