"""A seeded sampler that stays seeded, yet distinct, when several processes share one study.

Two processes that open one study with the same seed would draw the same candidates. Each process
builds its sampler at its first trial instead, seeded by the recipe's seed and that trial's number:
trial numbers are unique in a study, so parallel workers (local processes, other machines) draw
different candidates, a run from scratch draws exactly what the recipe's seed gives, and a resumed
run does not repeat the draws of the trials it already has.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def process_seed(seed: int, first_trial: int) -> int:
    """The seed of a process whose first trial has number `first_trial` (the recipe's seed for trial 0)."""
    if first_trial == 0:
        return seed
    return int(np.random.SeedSequence([seed, first_trial]).generate_state(1)[0])


class ProcessSeededSampler(BaseSampler):
    """Builds `build(seed)` at this process's first trial and forwards every sampler call to it."""

    def __init__(self, build: Callable[[int], BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = seed
        self._sampler: BaseSampler | None = None

    def _inner(self, first_trial: int = 0) -> BaseSampler:
        if self._sampler is None:
            self._sampler = self._build(process_seed(self._seed, first_trial))
        return self._sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner(trial.number).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._inner(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._inner(trial.number).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner().reseed_rng()

    def __repr__(self) -> str:
        return f"ProcessSeededSampler(seed={self._seed}, sampler={self._sampler!r})"
