"""The recipe's sampler by name (`search.sampler`): one registration per Optuna sampler in `SAMPLERS`, each made
from the recipe's `search:` section and a seed. TPE, GP and NSGA-II read the constraints each trial sets
(`Trial.set_constraint`, see search/trial/constraints.py)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import optuna

from registry import Registry
from search.recipe.config import StudyConfig
from search.recipe.sections import SearchConfig
from search.study.seeding import ProcessSeededSampler

SamplerFactory = Callable[[SearchConfig, int], optuna.samplers.BaseSampler]
SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


@SAMPLERS.register("tpe")
def tpe(s: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE after `startup_trials` random ones."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials, multivariate=True)


@SAMPLERS.register("gp")
def gp(s: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Gaussian-process Bayesian optimization after `startup_trials` random ones."""
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.startup_trials)


@SAMPLERS.register("nsga2")
def nsga2(s: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """NSGA-II with `population_size` candidates a generation."""
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)


@SAMPLERS.register("random")
def random_search(s: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Independent uniform sampling."""
    return optuna.samplers.RandomSampler(seed=seed)


def seeded_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The recipe's sampler with the given seed."""
    return SAMPLERS[config.search.sampler](config.search, seed)


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The recipe's sampler, seeded, so the same recipe samples the same candidates; processes sharing
    the study seed theirs apart (see `search.study.seeding`)."""
    return ProcessSeededSampler(partial(seeded_sampler, config), config.seed)
