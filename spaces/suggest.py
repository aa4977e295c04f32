"""The small interface through which a space asks for values, so spaces never import Optuna."""

from __future__ import annotations

import random
from typing import Protocol, Sequence, TypeVar

T = TypeVar("T")


class Suggest(Protocol):
    """Ask for one named value; the same name must always be asked with the same range."""

    def categorical(self, name: str, choices: Sequence[T]) -> T: ...

    def int(self, name: str, low: int, high: int, step: int = 1) -> int: ...

    def float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float: ...


class RandomSuggest:
    """A seeded uniform `Suggest` for sampling a space without a study (tests, latency tables)."""

    def __init__(self, seed: int | None = None, fixed: dict[str, object] | None = None) -> None:
        """`fixed`: categorical values to take instead of drawing, where they are among the choices."""
        self._rng = random.Random(seed)
        self.values: dict[str, object] = {}
        self.fixed = fixed or {}

    def categorical(self, name: str, choices: Sequence[T]) -> T:
        value = self.fixed[name] if self.fixed.get(name) in choices else self._rng.choice(list(choices))
        self.values[name] = value
        return value

    def int(self, name: str, low: int, high: int, step: int = 1) -> int:
        value = self._rng.randrange(low, high + 1, step)
        self.values[name] = value
        return value

    def float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        if step:
            n = int(round((high - low) / step))
            value = low + step * self._rng.randint(0, n)
        else:
            value = self._rng.uniform(low, high)
        self.values[name] = value
        return value
