"""The `Suggest` interface of spaces, backed by an Optuna trial."""

from __future__ import annotations

from typing import Sequence, TypeVar

import optuna

T = TypeVar("T")


class OptunaSuggest:
    """Forwards a space's requests for values to `trial.suggest_*`."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def categorical(self, name: str, choices: Sequence[T]) -> T:
        return self.trial.suggest_categorical(name, list(choices))

    def int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return self.trial.suggest_int(name, low, high, step=step)

    def float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        return self.trial.suggest_float(name, low, high, step=step, log=log)
