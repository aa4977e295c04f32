"""The latency budget a study checks before it trains a candidate: the candidate's latency predicted from the
study's latency table (see `search.trial.lut`), and candidates predicted over the budget skipped untrained."""

from __future__ import annotations

from typing import Any

import optuna

from evaluators.latency.table import LatencyTable, Prediction
from search.recipe.config import StudyConfig
from search.trial.locks import say_stderr
from search.trial.lut import require_units, unpredictable
from spaces import Space


class BudgetUnreachable(RuntimeError):
    """Every recent candidate was predicted over the budget: the budget cannot be met in this space."""


class LatencyBudget:
    """Predicts a candidate's latency from the study's table before training; over `budget_ms`, the trial is
    pruned untrained with the reason in its `error` attribute. After `max_streak` skips in a row each further
    skip fails its trial instead, so the study's failure cap stops a study whose budget no candidate meets."""

    def __init__(self, table: LatencyTable, space: Space, budget_ms: float | None, source: str,
                 max_streak: int = 100) -> None:
        self.table = table
        self.space = space
        self.budget_ms = budget_ms
        self.source = source
        self.max_streak = max_streak
        self.streak = 0

    @classmethod
    def from_config(cls, config: StudyConfig, space: Space, table: LatencyTable | None) -> "LatencyBudget | None":
        """The recipe's `latency.budget_ms` with the study's table (see `search.trial.staircase.study_table`); None
        without a table."""
        if table is None:
            return None
        require_units(space)
        lat = config.latency
        if lat.budget_ms is not None:
            total, _, lost = unpredictable(table, space)
            if lost:
                say_stderr(f"warning: latency.table {lat.table} cannot predict {lost} of the space's {total} unit "
                           "configurations (no measured unit of their block, stride, options and resolution): "
                           "candidates with them are trained without the latency.budget_ms check; rebuild the "
                           "table with a larger --max-configs")
        return cls(table, space, lat.budget_ms, lat.table)

    def predict(self, candidate: dict[str, Any]) -> Prediction:
        """The table's latency prediction for a candidate, from its units."""
        return self.table.predict(self.space.units(candidate))

    def enforce(self, prediction: Prediction) -> None:
        """Raise TrialPruned when `prediction` is over budget (BudgetUnreachable after too many in a row)."""
        if self.budget_ms is None or prediction.ms is None or prediction.ms <= self.budget_ms:
            self.streak = 0
            return
        self.streak += 1
        if self.streak > self.max_streak:
            raise BudgetUnreachable(
                f"{self.streak} candidates in a row were predicted over latency.budget_ms {self.budget_ms:g}; "
                "raise the budget or narrow the space"
            )
        raise optuna.TrialPruned(
            f"predicted latency {prediction.ms:.4f} ms is over latency.budget_ms {self.budget_ms:g} "
            f"(table {self.source}); skipped without training"
        )
