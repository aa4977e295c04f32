"""The one check a candidate meets before it is trained: its predicted latency against every latency limit of the
recipe — `latency.budget_ms`, `constraints.latency_ms` and `constraints.speedup` (over the base, prediction over
prediction, so the table's bias cancels). A candidate over any of them is screened: completed as infeasible, with
its prediction and the limit it missed, and never fine-tuned, so the sampler hears one thing for one fact."""

from __future__ import annotations

from search.latency.predictor import LatencyPredictor, Prediction
from search.recipe.config import StudyConfig


class BudgetUnreachable(RuntimeError):
    """Every recent candidate was screened: the latency limits cannot be met in this space."""


class LatencyGate:
    """Screens candidates by prediction (see the module). A table that cannot be vouched for screens nothing.
    After `max_streak` screens in a row, each further one fails its trial instead, so the study's failure cap stops
    a study whose limits no candidate meets."""

    def __init__(self, config: StudyConfig, predictor: LatencyPredictor, max_streak: int = 100) -> None:
        self.predictor = predictor
        self.budget_ms = config.latency.budget_ms
        self.latency_ms = config.constraints.latency_ms
        self.speedup = config.constraints.speedup
        self.max_streak = max_streak
        self.streak = 0

    @property
    def active(self) -> bool:
        """Whether the gate screens at all: some limit is set and the table can be vouched for."""
        return self.predictor.trusted and any(v is not None for v in (self.budget_ms, self.latency_ms, self.speedup))

    def missed(self, prediction: Prediction) -> str | None:
        """Why `prediction` is over a limit (None: within every limit, unpredictable, or the gate is off); raises
        BudgetUnreachable after too many screens in a row."""
        if not self.active or prediction.ms is None:
            return None
        over = []
        if self.budget_ms is not None and prediction.ms > self.budget_ms:
            over.append(f"latency.budget_ms {self.budget_ms:g}")
        if self.latency_ms is not None and prediction.ms > self.latency_ms:
            over.append(f"constraints.latency_ms {self.latency_ms:g}")
        if self.speedup is not None and prediction.speedup is not None and prediction.speedup < self.speedup:
            over.append(f"constraints.speedup {self.speedup:g}×")
        if not over:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak > self.max_streak:
            raise BudgetUnreachable(f"{self.streak} candidates in a row were predicted over {', '.join(over)}; relax "
                                    "the limit or narrow the space")
        return (f"predicted {prediction.speedup:.2f}× ({prediction.ms:.4f} ms) misses {' and '.join(over)}; not "
                "fine-tuned")
