"""What every executor shares: the `Executor` interface, the `EXECUTORS` registry that `slimsearch run` picks one
from by name, and the options a command line gives them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import optuna

from registry import Registry
from search.recipe.config import StudyConfig


@dataclass(frozen=True)
class ExecutorOptions:
    """Where trials run: local worker processes, or a Ray cluster and the resources of each Ray trial."""

    workers: int = 1
    address: str | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int | None = None


class Executor(Protocol):
    """Runs a study until `trials` have completed (or `timeout` passes) and returns it."""

    def __call__(self, config: StudyConfig, trials: int | None, timeout: float | None, show_progress: bool,
                 options: ExecutorOptions) -> optuna.Study: ...


EXECUTORS: Registry[Executor] = Registry("executor")
