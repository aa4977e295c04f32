"""Latency tables: per-unit latency measured on the user's own engine and device, keyed like Once-for-All's latency
lookup table (block type, input and output shapes, stride, options), and whole-network prediction from a network's
list of units.

A unit is a plain dict: `block`, `in_channels`, `out_channels`, `stride`, `resolution` (input side),
`out_resolution`, `options`. Every latency in a table is *relative*: a unit's time over the time of a fixed reference
kernel timed beside it (`evaluators.latency.relative`), so a table measured at one moment still describes the machine
when its speed has drifted. A network's latency in reference units is the table's fitted model of its units
(`evaluators.latency.table_model`); a speed-up is one prediction over another, and milliseconds come only from a
reference timed now.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from evaluators.latency.table_model import SelfCheck, TableModel, UnitSum

FORMAT = 2
CHECK_THRESHOLD = 10.0  # a table whose held-out speed-up error (MAPE, %) is above this is not trusted to screen


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


def family_key(unit: Mapping[str, Any]) -> str:
    """A unit's key without its channel counts: units of one family differ only in width."""
    return unit_key({**unit, "in_channels": "C", "out_channels": "C"})


def fit_family(members: list[tuple[int, int, float]]) -> Callable[[int, int], float]:
    """A value (latency, weights) as a function of (in, out) channels from a family's measured units: least squares
    on `a + b·in + c·out + d·in·out` where the members pin it down (at least 6, with 2+ distinct values of each),
    else the nearest member's value scaled by the work ratio `in·out / in'·out'` (capped to ×4 either way). The fit
    is kept within the family's measured range, widened by the same work ratio."""
    cin = np.array([m[0] for m in members], dtype=float)
    cout = np.array([m[1] for m in members], dtype=float)
    values = np.array([m[2] for m in members], dtype=float)
    coef = None
    if len(members) >= 6 and len(set(cin)) > 1 and len(set(cout)) > 1:
        design = np.stack([np.ones_like(cin), cin, cout, cin * cout], axis=1)
        coef = np.linalg.lstsq(design, values, rcond=None)[0]

    def nearest(i: int, o: int) -> float:
        k = int(np.argmin(np.abs(np.log(cin / i)) + np.abs(np.log(cout / o))))
        return float(values[k] * min(4.0, max(0.25, (i * o) / (cin[k] * cout[k]))))

    def predict(i: int, o: int) -> float:
        near = nearest(i, o)
        if coef is None:
            return near
        value = float(coef @ np.array([1.0, i, o, i * o]))
        return value if 0.5 * near <= value <= 2.0 * near else near

    return predict


@dataclass
class LatencyTable:
    """Relative unit latencies from one backend, version, device, precision and batch size; the model that turns
    them into a network's latency; the network everything is compared with (`anchor`: a compression study's base);
    how well the table predicted networks it was not fitted on (`check`); and how it was measured (`protocol`)."""

    backend: str
    backend_version: str
    device: str
    precision: str
    batch_size: int
    threads: int | None = None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: TableModel = field(default_factory=TableModel)
    anchor: dict[str, Any] = field(default_factory=dict)
    check: SelfCheck | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, unit: Mapping[str, Any], ratio: float, spread: float, ms: float, weights: int) -> None:
        """A unit's time over the reference's (`ratio`), that ratio's spread across rounds, its milliseconds as it ran
        and its weight count."""
        self.entries[unit_key(unit)] = {"rel": ratio, "spread": round(spread, 4), "ms": ms, "weights": weights,
                                        "unit": dict(unit)}

    def lookup(self, unit: Mapping[str, Any]) -> float | None:
        """The unit's latency in reference units, or None when it was not measured."""
        entry = self.entries.get(unit_key(unit))
        return None if entry is None else float(entry["rel"])

    def _families(self, value: str) -> dict[str, Callable[[int, int], float]]:
        cache = self.__dict__.setdefault("_family_cache", {})
        if cache.get(value, (None, -1))[1] != len(self.entries):
            groups: dict[str, list[tuple[int, int, float]]] = {}
            for entry in self.entries.values():
                u = entry["unit"]
                groups.setdefault(family_key(u), []).append((u["in_channels"], u["out_channels"], entry[value]))
            cache[value] = ({k: fit_family(v) for k, v in groups.items()}, len(self.entries))
        return cache[value][0]

    def estimate(self, unit: Mapping[str, Any], value: str = "rel") -> float | None:
        """A value (`rel`, `weights`) for a unit that was not measured, from the measured units of its family (the
        same block, stride, options and resolutions; see `fit_family`); None where the family has none."""
        fit = self._families(value).get(family_key(unit))
        return None if fit is None else fit(unit["in_channels"], unit["out_channels"])

    def sum_units(self, units: Sequence[Mapping[str, Any]]) -> UnitSum:
        """What a network's units add up to: their relative latencies and weights, the unit count, and which units
        were estimated from their neighbours or could not be predicted at all."""
        total, weights, missing, estimated, families = 0.0, 0.0, [], [], {}
        for unit in units:
            entry = self.entries.get(unit_key(unit))
            if entry is not None:
                rel = entry["rel"]
                weights += entry["weights"]
            else:
                rel = self.estimate(unit)
                if rel is None:
                    missing.append(unit_key(unit))
                    continue
                estimated.append(unit_key(unit))
                weights += self.estimate(unit, "weights") or 0.0
            total += rel
            families[unit["block"]] = families.get(unit["block"], 0.0) + rel
        return UnitSum(total, len(units), weights, missing, estimated, families)

    def predict(self, units: Sequence[Mapping[str, Any]]) -> float | None:
        """A network's latency in reference units, or None where some unit cannot be predicted."""
        s = self.sum_units(units)
        return None if s.missing else self.model.apply(s)

    @property
    def trusted(self) -> bool:
        """Whether the table may screen candidates: it checked itself within the threshold and was measured on a
        quiet machine."""
        return not self.problems()

    def problems(self) -> list[str]:
        """Why the table cannot be vouched for: its self-check failed or is missing, or it was measured under load."""
        out = []
        if self.check is None:
            out.append("it was never checked against networks it was not fitted on")
        elif not self.check.passed:
            out.append(f"it predicted the speed-up of {self.check.networks} held-out networks with {self.check.mape:.1f}% "
                       f"error (threshold {self.check.threshold:g}%)")
        if self.protocol.get("busy"):
            out.append(f"it was measured while the machine was busy ({self.protocol['busy']})")
        return out

    def check_matches(self, backend_name: str, version: str, device: str, precision: str, batch_size: int,
                      source: str = "table") -> None:
        """Refuse a table measured with another backend, version, device, precision or batch size."""
        mine = {"backend": backend_name, "backend_version": version, "device": device, "precision": precision,
                "batch_size": batch_size}
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
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        """Read a table written by `save`; a missing, malformed or older-format file is a TableError naming it."""
        path = Path(path)
        if not path.is_file():
            raise TableError(f"{path}: no such latency table; build one with `slimsearch lut build STUDY.yaml`")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.pop("format", None) != FORMAT:
                raise ValueError(f"written by an older slimsearch (expected format {FORMAT}); rebuild it with "
                                 "`slimsearch lut build --force`")
            data["model"] = TableModel(**data["model"])
            data["check"] = SelfCheck(**data["check"]) if data.get("check") else None
            return cls(**data)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise TableError(f"{path}: not a latency table written by `slimsearch lut build` ({exc})") from None
