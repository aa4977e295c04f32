"""Latency tables: per-unit latency measured on the user's own engine and device, keyed like Once-for-All's
latency lookup table (block type, input and output shapes, stride, options), and end-to-end prediction
from a network's list of units.

A unit is a plain dict: `block`, `in_channels`, `out_channels`, `stride`, `resolution` (input side),
`out_resolution`, `options`. Timing units one at a time counts each unit's per-call overhead (a session
run, an input copy) once per unit, while a whole network pays it once, and it misses fusion across unit
boundaries; so a prediction is `intercept + per_unit × units + scale × Σ unit latencies`, the three
coefficients fitted by least squares on whole networks measured when the table is built (with fewer terms
where leave-one-out error says the networks cannot support all three).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from evaluators.latency.base import LatencyBackend, LatencyStats

FORMAT = 1


class TableError(ValueError):
    """A latency table that cannot be used here: unreadable, or measured on another engine, device or setting."""


def unit_key(unit: Mapping[str, Any]) -> str:
    """e.g. `mbconv-input:16x16x24-output:8x8x32-stride:2-expand_ratio:6-kernel_size:3`."""
    r, o = unit["resolution"], unit["out_resolution"]
    parts = [
        unit["block"], f"input:{r}x{r}x{unit['in_channels']}", f"output:{o}x{o}x{unit['out_channels']}",
        f"stride:{unit['stride']}",
    ]
    parts += [f"{k}:{v}" for k, v in sorted(unit["options"].items())]
    return "-".join(parts)


def unit_input_shape(unit: Mapping[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of the tensor a unit takes."""
    return (unit["in_channels"], unit["resolution"], unit["resolution"])


def measure_unit(
    backend: LatencyBackend, module: nn.Module, unit: Mapping[str, Any], precision: str = "fp32", batch_size: int = 1,
) -> LatencyStats:
    """Time one unit's module alone on `backend`, on an input of the unit's shape."""
    torch.manual_seed(0)
    return backend.measure(module.eval(), unit_input_shape(unit), precision, batch_size)


@dataclass
class Correction:
    """Whole-network latency from unit latencies: `intercept + per_unit × n + scale × Σ units` (ms).

    Where that line reaches zero or below — a candidate far from the networks it was fitted on — the
    prediction is `ratio × Σ units` instead, the fitted networks' measured over summed latency, which stays
    positive and still grows with the units.
    """

    intercept_ms: float = 0.0
    per_unit_ms: float = 0.0
    scale: float = 1.0
    networks: int = 0
    fit_mape: float | None = None
    ratio: float = 1.0

    def apply(self, units_ms: float, n_units: int) -> float:
        line = self.intercept_ms + self.per_unit_ms * n_units + self.scale * units_ms
        return line if line > 0 else self.ratio * units_ms


FORMS = {  # design-matrix columns (1, unit count, Σ units) each form fits; the others are fixed
    "full": (True, True, True),
    "scale": (True, False, True),
    "offset": (True, True, False),
}


def _fit(s: np.ndarray, n: np.ndarray, y: np.ndarray, form: str) -> Correction | None:
    """Least squares of one form; None where it makes latency fall as units get slower."""
    use_b, use_n, use_s = FORMS[form]
    use_n = use_n and len(np.unique(n)) > 1  # one unit count cannot separate per-unit cost from the intercept
    cols = [c for c, on in zip((np.ones_like(s), n, s), (use_b, use_n, use_s)) if on]
    target = y if use_s else y - s
    coef = list(np.linalg.lstsq(np.column_stack(cols), target, rcond=None)[0])
    intercept = float(coef.pop(0))
    per_unit = float(coef.pop(0)) if use_n else 0.0
    scale = float(coef.pop(0)) if use_s else 1.0
    return Correction(intercept, per_unit, scale, len(y), ratio=_ratio(s, y)) if scale > 0 else None


def _ratio(s: np.ndarray, y: np.ndarray) -> float:
    """Measured over summed latency of the fitted networks: the correction where its line reaches zero."""
    return float(y.sum() / s.sum()) if s.sum() > 0 else 1.0


def _loo_mape(s: np.ndarray, n: np.ndarray, y: np.ndarray, form: str) -> float:
    """Leave-one-out error of a form: each network predicted by the fit on the others."""
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        corr = _fit(s[keep], n[keep], y[keep], form)
        if corr is None:
            return math.inf
        errors.append(abs(corr.apply(s[i], int(n[i])) - y[i]) / y[i])
    return float(np.mean(errors) * 100)


def fit_correction(units_ms: Sequence[float], n_units: Sequence[int], measured_ms: Sequence[float]) -> Correction:
    """Fit the correction on whole networks (Σ unit latencies, unit count, measured latency).

    With five or more networks, the form — all three terms, intercept + scale, or intercept + per-unit
    with the scale held at 1 — is the one with the lowest leave-one-out error, so a handful of networks
    does not buy a three-term fit that only matches those networks. With fewer, intercept + per-unit.
    """
    s = np.asarray(units_ms, float)
    n = np.asarray(n_units, float)
    y = np.asarray(measured_ms, float)
    if len(y) == 0:
        return Correction()
    if len(y) < 2:
        return Correction(float(y[0] - s[0]), 0.0, 1.0, 1, ratio=_ratio(s, y))
    form = min(FORMS, key=lambda f: _loo_mape(s, n, y, f)) if len(y) >= 5 else "offset"
    corr = _fit(s, n, y, form) or _fit(s, n, y, "offset")
    corr.fit_mape = mape([corr.apply(a, int(b)) for a, b in zip(s, n)], y)
    return corr


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error of predictions against measurements, in percent."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    return float(np.mean(np.abs(p - m) / m) * 100) if len(m) else math.nan


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    import pandas as pd

    if len(a) < 2:
        return math.nan
    return float(pd.Series(list(a)).rank().corr(pd.Series(list(b)).rank()))


@dataclass
class Prediction:
    """Predicted whole-network latency; `ms` is None when some units are neither in the table nor have a measured
    neighbour (`missing`); `estimated` are the units predicted from their neighbours (see `LatencyTable.estimate`)."""

    ms: float | None
    units_ms: float
    n_units: int
    missing: list[str] = field(default_factory=list)
    estimated: list[str] = field(default_factory=list)


def family_key(unit: Mapping[str, Any]) -> str:
    """A unit's key without its channel counts: units of one family differ only in width."""
    return unit_key({**unit, "in_channels": "C", "out_channels": "C"})


def fit_family(members: list[tuple[int, int, float]]) -> Callable[[int, int], float]:
    """Latency as a function of (in, out) channels from a family's measured units: least squares on
    `a + b·in + c·out + d·in·out` where the members pin it down (at least 6, with 2+ distinct values of each),
    else the nearest member's latency scaled by the work ratio `in·out / in'·out'` (capped to ×4 either way).
    The fit is kept within the family's measured range, widened by the same work ratio."""
    cin = np.array([m[0] for m in members], dtype=float)
    cout = np.array([m[1] for m in members], dtype=float)
    ms = np.array([m[2] for m in members], dtype=float)
    coef = None
    if len(members) >= 6 and len(set(cin)) > 1 and len(set(cout)) > 1:
        design = np.stack([np.ones_like(cin), cin, cout, cin * cout], axis=1)
        coef = np.linalg.lstsq(design, ms, rcond=None)[0]

    def nearest(i: int, o: int) -> float:
        k = int(np.argmin(np.abs(np.log(cin / i)) + np.abs(np.log(cout / o))))
        return float(ms[k] * min(4.0, max(0.25, (i * o) / (cin[k] * cout[k]))))

    def predict(i: int, o: int) -> float:
        near = nearest(i, o)
        if coef is None:
            return near
        value = float(coef @ np.array([1.0, i, o, i * o]))
        return value if 0.5 * near <= value <= 2.0 * near else near

    return predict


@dataclass
class LatencyTable:
    """Unit latencies from one backend, version, device, precision and batch size, plus the correction."""

    backend: str
    backend_version: str
    device: str
    precision: str
    batch_size: int
    threads: int | None = None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    correction: Correction = field(default_factory=Correction)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_backend(cls, backend: LatencyBackend, precision: str, batch_size: int, **meta: Any) -> "LatencyTable":
        """An empty table stamped with where its numbers come from."""
        return cls(backend.name, backend.version(), backend.device(), precision, batch_size,
                   getattr(backend, "threads", None), meta={"created": dt.datetime.now().isoformat(timespec="seconds"),
                                                            **meta})

    def add(self, unit: Mapping[str, Any], stats: LatencyStats) -> None:
        self.entries[unit_key(unit)] = {
            "median_ms": stats.median_ms, "p90_ms": stats.p90_ms, "cv": stats.cv, "unit": dict(unit),
        }

    def lookup(self, unit: Mapping[str, Any]) -> float | None:
        """The unit's median latency in ms, or None when it was not measured."""
        entry = self.entries.get(unit_key(unit))
        return None if entry is None else float(entry["median_ms"])

    def estimate(self, unit: Mapping[str, Any]) -> float | None:
        """A latency for a unit that was not measured, from the measured units of its family (the same block,
        stride, options and resolutions; see `fit_family`); None where the family has no measured unit."""
        if getattr(self, "_families", None) is None or self._families_size != len(self.entries):
            groups: dict[str, list[tuple[int, int, float]]] = {}
            for entry in self.entries.values():
                u = entry["unit"]
                groups.setdefault(family_key(u), []).append((u["in_channels"], u["out_channels"], entry["median_ms"]))
            self._families = {k: fit_family(v) for k, v in groups.items()}
            self._families_size = len(self.entries)
        fit = self._families.get(family_key(unit))
        return None if fit is None else fit(unit["in_channels"], unit["out_channels"])

    def predict(self, units: Sequence[Mapping[str, Any]]) -> Prediction:
        """Whole-network latency: the corrected sum of the units' table latencies, a unit that was not measured
        estimated from its measured neighbours."""
        total, missing, estimated = 0.0, [], []
        for unit in units:
            ms = self.lookup(unit)
            if ms is None:
                ms = self.estimate(unit)
                (missing if ms is None else estimated).append(unit_key(unit))
            total += ms or 0.0
        ms_pred = None if missing else self.correction.apply(total, len(units))
        return Prediction(ms_pred, total, len(units), missing, estimated)

    def check_matches(self, backend: LatencyBackend, precision: str, batch_size: int, source: str = "table") -> None:
        """Refuse a table measured with another backend, version, device, precision or batch size."""
        mine = {"backend": backend.name, "backend_version": backend.version(), "device": backend.device(),
                "precision": precision, "batch_size": batch_size}
        theirs = {k: getattr(self, k) for k in mine}
        diff = [f"{k} {theirs[k]!r} (here: {mine[k]!r})" for k in mine if theirs[k] != mine[k]]
        if diff:
            raise TableError(
                f"{source} was measured with {', '.join(diff)}; latencies from another engine or device do not "
                "predict this one: build a table here with `slimsearch lut build`"
            )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, **asdict(self)}
        path.write_text(json.dumps(data, indent=1, sort_keys=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        """Read a table written by `save`; a missing or malformed file is a TableError naming it."""
        path = Path(path)
        if not path.is_file():
            raise TableError(f"{path}: no such latency table; build one with `slimsearch lut build STUDY.yaml`")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
                raise ValueError(f"expected format {FORMAT}")
            data["correction"] = Correction(**data["correction"])
            return cls(**data)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise TableError(f"{path}: not a latency table written by `slimsearch lut build` ({exc})") from None
