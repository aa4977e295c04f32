"""How the backends time a run: CPU rounds until the round medians settle, CUDA events around GPU launches."""

from __future__ import annotations

import gc
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from evaluators.latency.base import LatencyStats, summarize


@dataclass
class Timings:
    """Raw per-run times of one model, the warm-up count, and per-round medians where timed in rounds."""

    times_ms: list[float]
    warmup_runs: int
    round_medians: list[float] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)

    def stats(self, *, extra: dict[str, object] | None = None, **meta: object) -> LatencyStats:
        """`LatencyStats` whose headline median is the median of round medians when timed in rounds
        (robust to one disturbed round), else the median over all runs; per-run statistics are kept."""
        extra = {**self.extra, **(extra or {})}
        headline = None
        if self.round_medians:
            rm = self.round_medians
            headline = statistics.median(rm)
            mean = statistics.fmean(rm)
            extra.update(
                rounds=len(rm), round_cv=statistics.pstdev(rm) / mean if mean > 0 else 0.0,
                run_median_ms=statistics.median(self.times_ms),
            )
        return summarize(self.times_ms, warmup_runs=self.warmup_runs, headline_ms=headline, extra=extra, **meta)


@contextmanager
def no_gc() -> Iterator[None]:
    """Keep Python's garbage collector from pausing inside timed runs."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cpu_rounds(
    run: Callable[[], object], *, warmup_s: float = 0.1, min_warmup_runs: int = 10, round_runs: int = 50,
    min_round_runs: int = 10, min_rounds: int = 3, max_rounds: int = 20, target_cv: float = 0.02,
    max_seconds: float = 3.0,
) -> Timings:
    """Time `run` with `perf_counter_ns` on the host.

    Warm-up lasts `warmup_s` (and at least `min_warmup_runs`); rounds of timed runs then go on until the
    coefficient of variation of the round medians is under `target_cv` (after `min_rounds`), `max_rounds`
    are done, or `max_seconds` is spent. A round holds `round_runs` runs, fewer for a slow model, so that
    `min_rounds` fit in half of `max_seconds` (never fewer than `min_round_runs`).
    """
    with no_gc():
        warm: list[float] = []
        t_end = time.perf_counter() + warmup_s
        while len(warm) < min_warmup_runs or time.perf_counter() < t_end:
            t = time.perf_counter_ns()
            run()
            warm.append((time.perf_counter_ns() - t) / 1e6)
        per_run_s = statistics.median(warm[len(warm) // 2:]) / 1e3
        budget = max_seconds / (2 * min_rounds)
        n = max(min_round_runs, min(round_runs, int(budget / per_run_s) if per_run_s > 0 else round_runs))
        times: list[float] = []
        medians: list[float] = []
        deadline = time.perf_counter() + max_seconds
        while len(medians) < max_rounds:
            chunk = []
            for _ in range(n):
                t = time.perf_counter_ns()
                run()
                chunk.append((time.perf_counter_ns() - t) / 1e6)
            times.extend(chunk)
            medians.append(statistics.median(chunk))
            if len(medians) >= min_rounds:
                mean = statistics.fmean(medians)
                if statistics.pstdev(medians) <= target_cv * mean or time.perf_counter() > deadline:
                    break
    return Timings(times, len(warm), medians, {"round_runs": n})


def cuda_event_times(
    launch: Callable[[], object], stream: object, *, warmup_s: float = 0.2, min_iterations: int = 200,
    min_seconds: float = 1.0, batch: int = 50,
) -> Timings:
    """GPU time of each `launch` on `stream` (a `torch.cuda.Stream`), from CUDA events recorded around it.

    Warm-up launches run (synchronized) for at least `warmup_s`; timed launches are then enqueued back to
    back in batches of `batch`, an event pair around each, until at least `min_iterations` ran and at
    least `min_seconds` passed: the GPU compute time trtexec reports, without host-side launch gaps
    between iterations.
    """
    import torch

    with torch.cuda.stream(stream), no_gc():
        warmup_runs = 0
        t_end = time.perf_counter() + warmup_s
        while warmup_runs < 10 or time.perf_counter() < t_end:
            launch()
            stream.synchronize()
            warmup_runs += 1
        times: list[float] = []
        t0 = time.perf_counter()
        while len(times) < min_iterations or time.perf_counter() - t0 < min_seconds:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(batch)]
            for start, end in events:
                start.record(stream)
                launch()
                end.record(stream)
            stream.synchronize()
            times.extend(start.elapsed_time(end) for start, end in events)
    return Timings(times, warmup_runs)


@dataclass
class Compared:
    """One model timed interleaved with a base: the median and range of its round medians, and its speed-up over
    the base as the median (and range) of the per-round ratios, base round median over this one's."""

    name: str
    median_ms: float
    low_ms: float
    high_ms: float
    speedup: float
    speedup_low: float
    speedup_high: float
    rounds: int
    runs: int


def interleaved(
    runners: dict[str, Callable[[], object]], base: str, *, rounds: int = 7, runs: int = 100, warmup: int = 20,
) -> list[Compared]:
    """Time every runner in turn, round after round (base, A, B, …, then the next round in rotated order), `runs`
    runs a round each, so every model sees the same machine state and a drift in it cancels out of the speed-ups.
    A model timed first and alone can look several times faster or slower than it is beside the others."""
    if base not in runners:
        raise ValueError(f"base {base!r} is not among the models timed")
    if rounds < 3 or runs < 1:
        raise ValueError("interleaved timing needs at least 3 rounds of at least 1 run")
    names = list(runners)
    medians: dict[str, list[float]] = {n: [] for n in names}
    with no_gc():
        for name in names:
            for _ in range(warmup):
                runners[name]()
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                run, chunk = runners[name], []
                for _ in range(runs):
                    t = time.perf_counter_ns()
                    run()
                    chunk.append((time.perf_counter_ns() - t) / 1e6)
                medians[name].append(statistics.median(chunk))
    out = []
    for name in names:
        m = medians[name]
        ratios = [b / x for b, x in zip(medians[base], m)]
        out.append(Compared(name, statistics.median(m), min(m), max(m), statistics.median(ratios), min(ratios),
                            max(ratios), rounds, runs))
    return out
