"""Latency relative to a reference timed beside it: the currency of latency tables.

A shared machine's speed drifts by 20–30% within minutes, so a millisecond measured at 10:00 does not describe a
network at 10:05. A ratio does: each round times the reference, the model, and the reference again, and the
model's time over the mean of the two reference times cancels any drift slower than a round (a few tens of
milliseconds). Tables store these ratios; a prediction becomes milliseconds only against a reference timed now.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from evaluators.latency.timing import no_gc

Runner = Callable[[], object]


def reference_module() -> nn.Module:
    """The reference kernel every unit of a table is timed against: a 3×3 conv, 32 → 32 channels, with BatchNorm
    and ReLU, run on a 32×16×16 input (`REFERENCE_SHAPE`) — the kind of work a table's units do, about as long."""
    return nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())


REFERENCE_SHAPE = (32, 16, 16)


@dataclass
class Relative:
    """A model's time over the reference's, timed in interleaved rounds: the median ratio, its spread across
    rounds ((max - min) / median), and the model's and the reference's median milliseconds as they ran."""

    ratio: float
    spread: float
    ms: float
    reference_ms: float
    rounds: int


def _chunk(run: Runner, n: int) -> float:
    """Median milliseconds of `n` runs."""
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - t) / 1e6)
    return statistics.median(times)


def per_run_seconds(run: Runner, n: int = 5) -> float:
    """Mean seconds of `n` runs: how many runs fill a round."""
    t = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - t) / n


class RelativeTimer:
    """Times runners against one reference runner: `rounds` rounds of (reference, model, reference), each part
    lasting about `round_seconds`, after `warmup` runs of each. The ratio of a round is the model's median over the
    mean of the two reference medians around it; a model's ratio is the median over rounds."""

    def __init__(self, reference: Runner, *, rounds: int = 3, round_seconds: float = 0.02, warmup: int = 10) -> None:
        if rounds < 1:
            raise ValueError("relative timing needs at least one round")
        self.reference = reference
        self.rounds = rounds
        self.round_seconds = round_seconds
        self.warmup = warmup
        with no_gc():
            for _ in range(warmup):
                reference()
            self._ref_runs = self._runs_for(per_run_seconds(reference))

    def _runs_for(self, per_run_s: float) -> int:
        return max(5, min(2000, int(self.round_seconds / max(per_run_s, 1e-7))))

    def measure(self, run: Runner) -> Relative:
        """`run`'s time relative to the reference."""
        with no_gc():
            for _ in range(self.warmup):
                run()
            n = self._runs_for(per_run_seconds(run))
            ratios, model_ms, ref_ms = [], [], []
            for _ in range(self.rounds):
                before = _chunk(self.reference, self._ref_runs)
                ms = _chunk(run, n)
                after = _chunk(self.reference, self._ref_runs)
                ref = (before + after) / 2
                ratios.append(ms / ref)
                model_ms.append(ms)
                ref_ms.append(ref)
        ratio = statistics.median(ratios)
        return Relative(ratio, (max(ratios) - min(ratios)) / ratio if ratio > 0 else 0.0, statistics.median(model_ms),
                        statistics.median(ref_ms), self.rounds)
