"""Latency tables of a space that lists its units (`blocks`): building one on this machine's engine and checking
its predictions against measurements. Which units a space can produce, and their modules, are the space's own
(`spaces.blocks.units`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from evaluators.latency import LatencyBackend
from evaluators.latency.table import (
    Correction,
    LatencyTable,
    TableError,
    fit_correction,
    mape,
    measure_unit,
    spearman,
    unit_key,
)
from search.errors import UsageError
from search.recipe.config import StudyConfig
from search.trial.locks import MachineLock
from spaces import RandomSuggest, Space, Unit

Progress = Callable[[int, int, str], None]


def sample_candidates(space: Space, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` candidates drawn uniformly with a seeded `RandomSuggest` (seeds `seed`, `seed + 1`, ...); a compression
    policy is drawn per group (the latency-aware policy is made from a table, so it cannot help build or check one)."""
    return [space.sample(RandomSuggest(seed + i, fixed={"policy": "group"})) for i in range(n)]


def distinct(units: Iterable[Unit]) -> dict[str, Unit]:
    """Units by key, first occurrence kept, order preserved."""
    out: dict[str, Unit] = {}
    for u in units:
        out.setdefault(unit_key(u), u)
    return out


def require_units(space: Space) -> None:
    """Latency tables need a space that lists a candidate's units."""
    if not space.lists_units:
        raise UsageError(f"latency tables need a space that lists its units (blocks); this study's space is "
                         f"{space.name!r}")


@dataclass
class BuildReport:
    """What `build_table` did: how many units, whether all or a sample, skipped units, time."""

    table: LatencyTable
    coverage: str
    measured: int
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def build_table(
    config: StudyConfig, space: Space, backend: LatencyBackend, *, max_configs: int = 2000, samples: int = 200,
    networks: int = 12, seed: int = 0, progress: Progress | None = None,
) -> BuildReport:
    """Measure every distinct unit the space can produce (or, past `max_configs`, the units of `samples`
    sampled candidates), then `networks` whole sampled networks to fit the per-network correction. Each
    measurement holds the machine's latency lock, so studies on this machine pause their fine-tunes for it, and
    their own measurements take turns with the build instead of waiting for all of it."""
    require_units(space)
    lat = config.latency
    t0 = time.perf_counter()
    pool = distinct(space.all_units())
    fit_nets = sample_candidates(space, networks, seed + 100_000)
    if len(pool) <= max_configs:
        coverage = f"all {len(pool)} unit configurations the space can produce"
    else:
        sampled = sample_candidates(space, samples, seed) + fit_nets
        seen = distinct(u for c in sampled for u in space.units(c))
        coverage = (f"the {len(seen)} unit configurations of {samples} sampled candidates and the {networks} "
                    f"correction networks (the space has {len(pool)}, more than --max-configs {max_configs})")
        pool = seen
    table = LatencyTable.for_backend(
        backend, lat.precision, lat.batch_size, study=config.name, input_shape=[space.in_channels, space.image_size,
                                                                                 space.image_size],
        coverage=coverage,
    )
    skipped = measure_units(table, space, pool, backend, lat.precision, lat.batch_size, progress)
    table.correction = fit_networks(table, space, backend, fit_nets, lat.precision, lat.batch_size, progress)
    seconds = time.perf_counter() - t0
    table.meta.update(units_measured=len(table.entries), units_skipped=len(skipped), build_seconds=round(seconds, 1))
    return BuildReport(table, coverage, len(table.entries), skipped, seconds)


def measure_units(
    table: LatencyTable, space: Space, pool: dict[str, Unit], backend: LatencyBackend, precision: str,
    batch_size: int, progress: Progress | None = None,
) -> dict[str, str]:
    """Time every unit of `pool` alone into `table`, each under the machine's latency lock; returns the units
    that cannot be built, with why."""
    skipped: dict[str, str] = {}
    lock = MachineLock()
    for i, (key, unit) in enumerate(pool.items()):
        if progress:
            progress(i, len(pool), f"unit {key}")
        try:
            module = space.unit_module(unit)
        except (ValueError, TypeError) as exc:
            skipped[key] = f"{type(exc).__name__}: {exc}"
            continue
        with lock.measuring():
            table.add(unit, measure_unit(backend, module, unit, precision, batch_size))
    return skipped


def fit_networks(
    table: LatencyTable, space: Space, backend: LatencyBackend, candidates: list[dict[str, Any]], precision: str,
    batch_size: int, progress: Progress | None = None,
) -> Correction:
    """Measure whole networks, each under the machine's latency lock, and fit the table's correction on them."""
    sums, counts, measured = [], [], []
    lock = MachineLock()
    for j, candidate in enumerate(candidates):
        if progress:
            progress(j, len(candidates), "whole network (for the correction)")
        prediction = table.predict(space.units(candidate))
        if prediction.missing:
            continue
        torch.manual_seed(0)
        model = space.build(candidate)
        with lock.measuring():
            stats = backend.measure(model, _input_shape(space), precision, batch_size)
        sums.append(prediction.units_ms)
        counts.append(prediction.n_units)
        measured.append(stats.median_ms)
    return fit_correction(sums, counts, measured)


def _input_shape(space: Space) -> tuple[int, int, int]:
    return (space.in_channels, space.image_size, space.image_size)


@dataclass
class CheckRow:
    """One sampled candidate: predicted and measured latency, and how long each took to get."""

    candidate: str
    units: int
    predicted_ms: float | None
    units_ms: float
    measured_ms: float
    predict_s: float
    measure_s: float


@dataclass
class CheckReport:
    """What `lut check` found: one row per sampled network, the MAPE and the rank correlation."""

    rows: list[CheckRow]
    mape: float
    spearman: float


def check_table(
    config: StudyConfig, space: Space, table: LatencyTable, backend: LatencyBackend, *, samples: int = 20,
    seed: int = 1_000_000, progress: Progress | None = None,
) -> CheckReport:
    """Predict and measure `samples` sampled candidates end to end; MAPE and Spearman of prediction vs measurement."""
    require_units(space)
    lat = config.latency
    rows = []
    for i, candidate in enumerate(sample_candidates(space, samples, seed)):
        rows.append(_check_one(space, table, backend, candidate, lat.precision, lat.batch_size))
        if progress:
            progress(i + 1, samples, "predicting and measuring candidates")
    known = [r for r in rows if r.predicted_ms is not None]
    return CheckReport(rows, mape([r.predicted_ms for r in known], [r.measured_ms for r in known]),
                       spearman([r.predicted_ms for r in known], [r.measured_ms for r in known]))


def _check_one(space: Space, table: LatencyTable, backend: LatencyBackend, candidate: dict[str, Any],
               precision: str, batch_size: int) -> CheckRow:
    """Predict one candidate from the table, then measure it under the machine's latency lock; each timed on its
    own."""
    t = time.perf_counter()
    prediction = table.predict(space.units(candidate))
    predict_s = time.perf_counter() - t
    torch.manual_seed(0)
    model = space.build(candidate)
    with MachineLock().measuring():
        t = time.perf_counter()
        stats = backend.measure(model, _input_shape(space), precision, batch_size)
        measure_s = time.perf_counter() - t
    return CheckRow(space.describe(candidate), prediction.n_units, prediction.ms,
                    prediction.units_ms, stats.median_ms, predict_s, measure_s)


def unpredictable(table: LatencyTable, space: Space) -> tuple[int, int, int]:
    """(units the space can produce, of them measured, of them with neither a measurement nor a measured
    neighbour to estimate them from): how much of the space the table covers."""
    pool = distinct(space.all_units())
    measured = sum(1 for key in pool if key in table.entries)
    lost = sum(1 for key, unit in pool.items() if key not in table.entries and table.estimate(unit) is None)
    return len(pool), measured, lost


def load_table(path: str | Path, backend: LatencyBackend, precision: str, batch_size: int) -> LatencyTable:
    """Read a table and refuse it unless it was measured with this backend, device, precision and batch size."""
    try:
        table = LatencyTable.load(path)
        table.check_matches(backend, precision, batch_size, source=str(path))
    except TableError as exc:
        raise UsageError(str(exc)) from None
    return table


