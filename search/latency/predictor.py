"""The study's one handle on its latency table: a candidate's predicted speed-up over the table's reference network
(a compression study's base), and the same as milliseconds against the reference kernel timed in this process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evaluators.latency.table import LatencyTable
from search.errors import UsageError
from spaces import Candidate, Space, Unit


@dataclass(frozen=True)
class Prediction:
    """A candidate's latency as the table predicts it: its speed-up over the reference network and its milliseconds
    (reference units × the reference kernel's milliseconds now); both None where some unit cannot be predicted
    (`missing`). `estimated`: units predicted from measured neighbours of their family."""

    speedup: float | None
    ms: float | None
    missing: tuple[str, ...] = ()
    estimated: int = 0


class UnitsPredictor:
    """A network's latency in the table's reference units from its units (what the staircase and the greedy policy
    compare); a unit missing from the table is a UsageError. A class, not a closure, so a space holding it pickles
    (the Ray driver ships the space to its workers)."""

    def __init__(self, table: LatencyTable) -> None:
        self.table = table

    def __call__(self, units: list[Unit]) -> float:
        s = self.table.sum_units(units)
        if s.missing:
            raise UsageError(f"the latency table has no entry for {s.missing[0]} (and {len(s.missing) - 1} more); "
                             "rebuild it with `slimsearch lut build --force`")
        return self.table.model.apply(s)


class LatencyPredictor:
    """Predicts candidates of one space from one table; `reference_ms` is the reference kernel's milliseconds as
    timed in this process (the table's own where nothing was timed), which turns reference units into ms."""

    def __init__(self, table: LatencyTable, space: Space, reference_ms: float, trust: str = "checked") -> None:
        self.table = table
        self.space = space
        self.reference_ms = reference_ms
        self.trusted = trust == "always" or table.trusted
        self._base = table.predict(space.units(space.reference_candidate()))

    def predict(self, candidate: Candidate) -> Prediction:
        """The candidate's predicted speed-up over the reference network, and its milliseconds."""
        s = self.table.sum_units(self.space.units(candidate))
        if s.missing or self._base is None:
            return Prediction(None, None, tuple(s.missing), len(s.estimated))
        rel = self.table.model.apply(s)
        return Prediction(self._base / rel, rel * self.reference_ms, (), len(s.estimated))

    def base_ms(self) -> float | None:
        """The reference network's (the base's) predicted milliseconds."""
        return None if self._base is None else self._base * self.reference_ms

    def record(self, prediction: Prediction) -> dict[str, Any]:
        """The trial-record fields of a prediction."""
        out: dict[str, Any] = {"predicted_latency_ms": prediction.ms, "predicted_speedup": prediction.speedup}
        if prediction.missing:
            out["latency_table_missing"] = list(prediction.missing)
        return out
