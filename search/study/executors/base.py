"""What every executor shares: the `Executor` interface, the `EXECUTORS` registry that `slimsearch run` picks one
from by name, the options a command line gives them, and the failure streak that stops a study whose recipe is
wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import optuna

from registry import Registry
from search.errors import UsageError
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


class FailureStreak:
    """Failed trials in a row; `limit` of them trip it, which means the recipe is wrong."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.tripped = False

    def see(self, failed: bool) -> bool:
        """Count one finished trial; whether the streak has tripped."""
        self.streak = self.streak + 1 if failed else 0
        self.tripped = self.tripped or self.streak >= self.limit
        return self.tripped

    def error(self, last_error: str) -> UsageError:
        """The error a tripped study stops with, naming the last failure."""
        return UsageError(
            f"stopped after {self.limit} failed trials in a row (search.max_consecutive_failures); the last error "
            f"was: {last_error}. Fix the recipe and resume."
        )
