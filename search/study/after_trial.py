"""What a study does after each finished trial, in one Optuna callback: `AfterTrial` reads the study once
(`FinishedTrial`: its trials, evaluated count and front) and hands that to each listener in turn — the budget that
stops the study, the failure streak, the artifact store, the progress bar. Every executor runs the same listeners
this way: `Study.optimize` calls it, the Ray searcher calls it, the local parent calls it on the trials its workers
finished."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import UsageError
from search.results.front import FinishedTrial
from search.results.record import TrialRecord
from search.study.interrupt import raise_if_interrupted

Listener = Callable[[FinishedTrial], None]


class AfterTrial:
    """Optuna callback: one `FinishedTrial` per finished trial, shared by the listeners, called in order."""

    def __init__(self, *listeners: Listener | None) -> None:
        self.listeners = [listener for listener in listeners if listener is not None]

    def __call__(self, study: optuna.Study, trial: FrozenTrial, trials: list[FrozenTrial] | None = None) -> None:
        raise_if_interrupted()  # an interrupt that struck where Python could not raise it stops the study here
        finished = FinishedTrial(study, trial, trials)
        for listener in self.listeners:
            listener(finished)


class StopAtBudget:
    """Listener: stop the study once it has evaluated `target` candidates."""

    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, finished: FinishedTrial) -> None:
        if finished.evaluated >= self.target:
            finished.study.stop()


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


class FailureCap:
    """Listener: stop the study after `limit` failed trials in a row (a `FailureStreak`)."""

    def __init__(self, limit: int) -> None:
        self.failures = FailureStreak(limit)
        self.last_error = ""

    @property
    def tripped(self) -> bool:
        """Whether the streak stopped the study."""
        return self.failures.tripped

    def __call__(self, finished: FinishedTrial) -> None:
        self.last_error = TrialRecord.of(finished.trial).error or finished.trial.state.name.lower()
        if self.failures.see(finished.trial.state == TrialState.FAIL):
            finished.study.stop()
