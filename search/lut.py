"""Latency tables for the `blocks` space: which units to measure, how to build each one, building and checking
a table, and the latency budget a study checks before it trains a candidate."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
import torch
import torch.nn as nn

from evaluators.latency import LatencyBackend
from evaluators.latency.table import (
    Correction, LatencyTable, Prediction, TableError, fit_correction, mape, measure_unit, spearman, unit_key,
)
from search.config import StudyConfig
from search.errors import UsageError
from search.executors.lock import MachineLock
from spaces import RandomSuggest, Space
from spaces.blocks import BLOCKS
from spaces.layers import ConvBNAct

Unit = dict[str, Any]
Progress = Callable[[int, int, str], None]


def unit_module(unit: Unit) -> nn.Module:
    """The module a unit stands for, built exactly as `BlockNet` builds it."""
    block, cin, cout, stride = unit["block"], unit["in_channels"], unit["out_channels"], unit["stride"]
    if block in ("stem", "head"):
        return ConvBNAct(cin, cout, unit["options"]["kernel_size"], stride)
    if block == "classifier":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, cout))
    return BLOCKS[block](cin, cout, stride, **unit["options"])


def _unit(block: str, cin: int, cout: int, stride: int, res: int, options: dict[str, Any]) -> Unit:
    out_res = 1 if block == "classifier" else (res - 1) // stride + 1
    return {"block": block, "in_channels": cin, "out_channels": cout, "stride": stride, "resolution": res,
            "out_resolution": out_res, "options": dict(options)}


def _option_sets(choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(choices)
    return [dict(zip(names, values)) for values in itertools.product(*(choices[n] for n in names))]


def enumerate_units(space: Any) -> list[Unit]:
    """Every distinct unit the space can produce: each block × option set × (in, out) width pair × stride at
    its stage's input resolution, repeats of a stage at its output resolution, and the stem, head and
    classifier for every width that can feed them. Widths step by `round_to`."""
    cfg = space.config

    def widths(rng: tuple[int, int]) -> list[int]:
        return list(range(rng[0], rng[1] + 1, cfg.round_to))

    res = space.image_size
    prev = widths(cfg.stem_width)
    units = [_unit("stem", space.in_channels, w, cfg.stem_stride, res, {"kernel_size": 3}) for w in prev]
    res = units[0]["out_resolution"]
    for stage in cfg.stages:
        ws = widths(stage.width)
        out_res = (res - 1) // stage.stride + 1
        for block in cfg.blocks:
            for options in _option_sets(space.block_options(block)):
                units += [_unit(block, cin, w, stage.stride, res, options) for cin in prev for w in ws]
                if stage.depth[1] > 1:
                    units += [_unit(block, w, w, 1, out_res, options) for w in ws]
        prev, res = ws, out_res
    if cfg.head_width:
        units += [_unit("head", cin, cfg.head_width, 1, res, {"kernel_size": 1}) for cin in prev]
        prev = [cfg.head_width]
    units += [_unit("classifier", cin, space.num_classes, 1, res, {}) for cin in prev]
    return units


def sample_candidates(space: Space, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` candidates drawn uniformly with a seeded `RandomSuggest` (seeds `seed`, `seed + 1`, ...)."""
    return [space.sample(RandomSuggest(seed + i)) for i in range(n)]


def distinct(units: Iterable[Unit]) -> dict[str, Unit]:
    """Units by key, first occurrence kept, order preserved."""
    out: dict[str, Unit] = {}
    for u in units:
        out.setdefault(unit_key(u), u)
    return out


def require_units(space: Any) -> None:
    """Latency tables need a space that lists a candidate's units."""
    if not hasattr(space, "units"):
        raise UsageError(f"latency tables need a space that lists its units (blocks); this study's space is "
                         f"{getattr(space, 'name', type(space).__name__)!r}")


@dataclass
class BuildReport:
    """What `build_table` did: how many units, whether all or a sample, skipped units, time."""

    table: LatencyTable
    coverage: str
    measured: int
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def build_table(
    config: StudyConfig, space: Any, backend: LatencyBackend, *, max_configs: int = 2000, samples: int = 200,
    networks: int = 12, seed: int = 0, progress: Progress | None = None,
) -> BuildReport:
    """Measure every distinct unit the space can produce (or, past `max_configs`, the units of `samples`
    sampled candidates), then `networks` whole sampled networks to fit the per-network correction. The
    measurements hold the machine's latency lock, so studies on this machine pause their fine-tunes meanwhile."""
    require_units(space)
    lat = config.latency
    t0 = time.perf_counter()
    pool = distinct(enumerate_units(space))
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
    with MachineLock().measuring():
        skipped = measure_units(table, pool, backend, lat.precision, lat.batch_size, progress)
        table.correction = fit_networks(table, space, backend, fit_nets, lat.precision, lat.batch_size, progress)
    seconds = time.perf_counter() - t0
    table.meta.update(units_measured=len(table.entries), units_skipped=len(skipped), build_seconds=round(seconds, 1))
    return BuildReport(table, coverage, len(table.entries), skipped, seconds)


def measure_units(
    table: LatencyTable, pool: dict[str, Unit], backend: LatencyBackend, precision: str, batch_size: int,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Time every unit of `pool` alone into `table`; returns the units that cannot be built, with why."""
    skipped: dict[str, str] = {}
    for i, (key, unit) in enumerate(pool.items()):
        if progress:
            progress(i, len(pool), f"unit {key}")
        try:
            module = unit_module(unit)
        except (ValueError, TypeError) as exc:
            skipped[key] = f"{type(exc).__name__}: {exc}"
            continue
        table.add(unit, measure_unit(backend, module, unit, precision, batch_size))
    return skipped


def fit_networks(
    table: LatencyTable, space: Any, backend: LatencyBackend, candidates: list[dict[str, Any]], precision: str,
    batch_size: int, progress: Progress | None = None,
) -> Correction:
    """Measure whole networks and fit the table's per-network correction on them."""
    sums, counts, measured = [], [], []
    for j, candidate in enumerate(candidates):
        if progress:
            progress(j, len(candidates), "whole network (for the correction)")
        prediction = table.predict(space.units(candidate))
        if prediction.missing:
            continue
        torch.manual_seed(0)
        stats = backend.measure(space.build(candidate), _input_shape(space), precision, batch_size)
        sums.append(prediction.units_ms)
        counts.append(prediction.n_units)
        measured.append(stats.median_ms)
    return fit_correction(sums, counts, measured)


def _input_shape(space: Any) -> tuple[int, int, int]:
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
    config: StudyConfig, space: Any, table: LatencyTable, backend: LatencyBackend, *, samples: int = 20,
    seed: int = 1_000_000, progress: Progress | None = None,
) -> CheckReport:
    """Predict and measure `samples` sampled candidates end to end; MAPE and Spearman of prediction vs measurement."""
    require_units(space)
    lat = config.latency
    describe = getattr(space, "describe", None)
    rows = []
    with MachineLock().measuring():
        for i, candidate in enumerate(sample_candidates(space, samples, seed)):
            rows.append(_check_one(space, table, backend, candidate, describe, lat.precision, lat.batch_size))
            if progress:
                progress(i + 1, samples, "predicting and measuring candidates")
    known = [r for r in rows if r.predicted_ms is not None]
    return CheckReport(rows, mape([r.predicted_ms for r in known], [r.measured_ms for r in known]),
                       spearman([r.predicted_ms for r in known], [r.measured_ms for r in known]))


def _check_one(space: Any, table: LatencyTable, backend: LatencyBackend, candidate: dict[str, Any], describe: Any,
               precision: str, batch_size: int) -> CheckRow:
    """Predict one candidate from the table, then measure it; each timed on its own."""
    t = time.perf_counter()
    prediction = table.predict(space.units(candidate))
    predict_s = time.perf_counter() - t
    torch.manual_seed(0)
    model = space.build(candidate)
    t = time.perf_counter()
    stats = backend.measure(model, _input_shape(space), precision, batch_size)
    return CheckRow(describe(candidate) if describe else str(candidate), prediction.n_units, prediction.ms,
                    prediction.units_ms, stats.median_ms, predict_s, time.perf_counter() - t)


def load_table(path: str | Path, backend: LatencyBackend, precision: str, batch_size: int) -> LatencyTable:
    """Read a table and refuse it unless it was measured with this backend, device, precision and batch size."""
    try:
        table = LatencyTable.load(path)
        table.check_matches(backend, precision, batch_size, source=str(path))
    except TableError as exc:
        raise UsageError(str(exc)) from None
    return table


class BudgetUnreachable(RuntimeError):
    """Every recent candidate was predicted over the budget: the budget cannot be met in this space."""


class LatencyBudget:
    """Predicts a candidate's latency from the study's table before training; over `budget_ms`, the trial is
    pruned untrained with the reason in its `error` attribute. After `max_streak` skips in a row each further
    skip fails its trial instead, so the study's failure cap stops a study whose budget no candidate meets."""

    def __init__(self, table: LatencyTable, space: Any, budget_ms: float | None, source: str,
                 max_streak: int = 100) -> None:
        self.table = table
        self.space = space
        self.budget_ms = budget_ms
        self.source = source
        self.max_streak = max_streak
        self.streak = 0

    @classmethod
    def from_config(cls, config: StudyConfig, space: Space, backend: LatencyBackend) -> "LatencyBudget | None":
        """The recipe's `latency.table` / `latency.budget_ms`, checked against this backend; None without a table."""
        lat = config.latency
        if lat.table is None:
            return None
        require_units(space)
        return cls(load_table(lat.table, backend, lat.precision, lat.batch_size), space, lat.budget_ms, lat.table)

    def predict(self, candidate: dict[str, Any]) -> Prediction:
        """The table's latency prediction for a candidate, from its units."""
        return self.table.predict(self.space.units(candidate))

    def check(self, trial: optuna.Trial, candidate: dict[str, Any]) -> None:
        """Record the prediction on the trial; raise TrialPruned when it is over budget."""
        prediction = self.predict(candidate)
        trial.set_user_attr("predicted_latency_ms", prediction.ms)
        if prediction.missing:
            trial.set_user_attr("latency_table_missing", prediction.missing)
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
