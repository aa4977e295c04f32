"""What every executor shares: the `Executor` interface, the `EXECUTORS` registry that `slimsearch run` picks one
from by name, and the options a command line gives them."""

from __future__ import annotations

import sys
import time
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


def time_left(timeout: float | None, begun: float) -> float | None:
    """What is left of a run's `timeout` (None: no timeout) counted from `begun` (a `time.monotonic()` taken as the run
    started): the base's training and the latency table's build, which come before the first trial, count against it,
    as the user who gave `--timeout` expects. Where nothing is left, says so on stderr (no trial starts)."""
    if timeout is None:
        return None
    left = timeout - (time.monotonic() - begun)
    if left <= 0:
        print(f"--timeout {timeout:g} s passed while the study prepared (base network, latency table: "
              f"{time.monotonic() - begun:.0f} s); no trial started — resume with a longer --timeout", file=sys.stderr)
    return left
