"""A latency table that builds and checks itself from callables: which units to measure, how to make each unit's
module, which whole networks to fit the model on and which to hold out, and the anchor network speed-ups are
measured against. Nothing here knows what a space or a study is.

Build: every unit timed against the reference kernel; the anchor timed against the reference; fit networks and
held-out networks timed interleaved with the anchor; the model fitted on the first and checked on the second
(the self-check). The machine's load is watched throughout and recorded with the table, with the CPU, the engine
and the spread of the measurements, so a table says how it was measured.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from evaluators.latency.engine_timer import EngineTimer, Paired
from evaluators.latency.machine_load import LoadMonitor
from evaluators.latency.relative import REFERENCE_SHAPE
from evaluators.latency.table import CHECK_THRESHOLD, LatencyTable, mape, spearman, unit_input_shape
from evaluators.latency.table_model import SelfCheck, fit_model

Unit = Mapping[str, Any]
Progress = Callable[[int, int, str], None]


@dataclass
class Network:
    """A whole network as a table sees it: a name, its units, and how to build it."""

    name: str
    units: list[Unit]
    build: Callable[[], nn.Module]


@dataclass
class BuildReport:
    """What a build did: the table, the units that could not be built (with why), and its seconds."""

    table: LatencyTable
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class CheckRow:
    """One network: predicted and measured speed-up over the anchor (with the measurement's spread), and the same
    in milliseconds (the prediction scaled by the anchor as measured beside it)."""

    network: str
    predicted_speedup: float | None
    measured_speedup: float
    spread: float
    predicted_ms: float | None
    measured_ms: float
    estimated_units: int


@dataclass
class CheckReport:
    """Predicted against measured speed-ups of networks: MAPE and Spearman of the speed-up, MAPE of ms, the median
    spread of the measurements, and how busy the machine was meanwhile."""

    rows: list[CheckRow]
    mape: float
    spearman: float
    ms_mape: float
    max_error: float
    spread: float
    load: dict[str, float]
    busy: str | None


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tick(progress: Progress | None, done: int, total: int, message: str) -> None:
    if progress:
        progress(done, total, message)


def measure_units(table: LatencyTable, units: Mapping[str, Unit], module_of: Callable[[Unit], nn.Module],
                  timer: EngineTimer, progress: Progress | None = None, offset: int = 0, total: int | None = None,
                  guard: Callable[[], Any] | None = None) -> dict[str, str]:
    """Time every unit of `units` against the reference into `table` (each under `guard()`, a context manager
    such as the machine's latency lock, where given); returns the units whose module cannot be built, with why."""
    skipped: dict[str, str] = {}
    total = total or len(units)
    for i, (key, unit) in enumerate(units.items()):
        _tick(progress, offset + i, total, "units")
        try:
            module = module_of(unit)
        except (ValueError, TypeError) as exc:
            skipped[key] = f"{type(exc).__name__}: {exc}"
            continue
        torch.manual_seed(0)
        with (guard or nullcontext)():
            r = timer.unit(module, unit_input_shape(unit))
        table.add(unit, r.ratio, r.spread, r.ms, _count(module))
    return skipped


def predicted_speedup(table: LatencyTable, anchor: Network, network: Network) -> float | None:
    """The table's speed-up of `network` over `anchor`: one prediction over the other, so a bias common to both
    cancels; None where a unit of either cannot be predicted."""
    a, b = table.predict(anchor.units), table.predict(network.units)
    return None if a is None or b is None or b <= 0 else a / b


def build_table(
    table: LatencyTable, units: Mapping[str, Unit], module_of: Callable[[Unit], nn.Module], input_shape: tuple[int, ...],
    anchor: Network, networks: Callable[[LatencyTable], tuple[Sequence[Network], Sequence[Network]]],
    timer: EngineTimer, progress: Progress | None = None, guard: Callable[[], Any] | None = None,
    threshold: float = CHECK_THRESHOLD,
) -> BuildReport:
    """Measure `units` into `table`, then fit its model on the first list `networks(table)` gives and check it on
    the second (they are asked for once the units are in, so they can be drawn as a study would draw them)."""
    t0 = time.perf_counter()
    monitor = LoadMonitor()
    skipped = measure_units(table, units, module_of, timer, progress, 0, len(units), guard)
    unit_load = monitor.sample()
    fit, holdout = networks(table)
    total = len(units) + len(fit) + len(holdout) + 1
    _tick(progress, len(units), total, "whole networks")
    torch.manual_seed(0)
    anchor_module = anchor.build()
    with (guard or nullcontext)():
        anchor_runner = timer.runner(anchor_module, input_shape) if timer.runs_in_process else anchor_module
        anchor_rel = _anchor_relative(timer, anchor_module, input_shape)
    measured: list[Paired] = []
    for j, net in enumerate([*fit, *holdout]):
        _tick(progress, len(units) + 1 + j, total, "whole networks")
        torch.manual_seed(0)
        with (guard or nullcontext)():
            measured.append(timer.paired(anchor_runner, net.build(), input_shape))
    _tick(progress, total, total, "whole networks")
    table.anchor = {"name": anchor.name, "rel": anchor_rel, "ms": measured[0].anchor_ms if measured else None}
    feats = [table.sum_units(n.units).features() for n in fit]
    table.model = fit_model(feats, [p.speedup for p in measured[:len(fit)]], table.sum_units(anchor.units).features(),
                            anchor_rel)
    table.check = self_check(table, anchor, holdout, measured[len(fit):], threshold)
    load = monitor.sample()
    spreads = [e["spread"] for e in table.entries.values()]
    table.protocol = {
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "reference": f"3x3 conv 32->32 + BN + ReLU on {list(REFERENCE_SHAPE)}", "reference_ms": timer.reference_ms(),
        "unit_spread_median": round(statistics.median(spreads), 4) if spreads else None,
        "network_spread_median": round(statistics.median([p.spread for p in measured]), 4) if measured else None,
        "load": load.as_dict(), "load_units": unit_load.as_dict(), "busy": load.busy() or unit_load.busy(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return BuildReport(table, skipped, time.perf_counter() - t0)


def _anchor_relative(timer: EngineTimer, anchor: nn.Module, input_shape: tuple[int, ...]) -> float:
    """The anchor's time in reference units, the median of three measurements."""
    return statistics.median(timer.unit(anchor, input_shape).ratio for _ in range(3))


def self_check(table: LatencyTable, anchor: Network, holdout: Sequence[Network], measured: Sequence[Paired],
               threshold: float) -> SelfCheck | None:
    """The table's speed-up error on networks it was not fitted on (None without any)."""
    pairs = [(predicted_speedup(table, anchor, n), m.speedup) for n, m in zip(holdout, measured)]
    pairs = [(p, m) for p, m in pairs if p is not None]
    if not pairs:
        return None
    p, m = [a for a, _ in pairs], [b for _, b in pairs]
    errors = [abs(a - b) / b * 100 for a, b in pairs]
    return SelfCheck(len(pairs), round(mape(p, m), 3), round(max(errors), 3),
                     round(spearman(p, m), 4) if len(pairs) > 1 else float("nan"), threshold)


def check_table(table: LatencyTable, anchor: Network, networks: Sequence[Network], input_shape: tuple[int, ...],
                timer: EngineTimer, progress: Progress | None = None,
                guard: Callable[[], Any] | None = None) -> CheckReport:
    """Predict every network's speed-up over `anchor` from the table, and measure it interleaved with the anchor."""
    monitor = LoadMonitor()
    torch.manual_seed(0)
    anchor_module = anchor.build()
    anchor_runner = timer.runner(anchor_module, input_shape) if timer.runs_in_process else anchor_module
    rows = []
    for i, net in enumerate(networks):
        _tick(progress, i, len(networks), "predicting and measuring networks")
        predicted = predicted_speedup(table, anchor, net)
        torch.manual_seed(0)
        with (guard or nullcontext)():
            m = timer.paired(anchor_runner, net.build(), input_shape)
        rows.append(CheckRow(net.name, predicted, m.speedup, m.spread,
                             None if predicted is None else m.anchor_ms / predicted, m.ms,
                             len(table.sum_units(net.units).estimated)))
    _tick(progress, len(networks), len(networks), "predicting and measuring networks")
    known = [r for r in rows if r.predicted_speedup is not None]
    load = monitor.sample()
    p, m = [r.predicted_speedup for r in known], [r.measured_speedup for r in known]
    errors = [abs(a - b) / b * 100 for a, b in zip(p, m)]
    return CheckReport(rows, mape(p, m), spearman(p, m), mape([r.predicted_ms for r in known],
                                                              [r.measured_ms for r in known]),
                       max(errors) if errors else float("nan"),
                       statistics.median([r.spread for r in rows]) if rows else float("nan"), load.as_dict(),
                       load.busy())
