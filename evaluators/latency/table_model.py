"""From a network's units to the network's latency: the model a latency table fits on whole networks.

Timing a unit alone differs from running it inside a network: the unit pays the engine's per-call overhead and
its own layout reorders at its boundaries, while the network pays them once; the unit's weights stay in cache
across repeated runs, while a network streams the weights of every layer. So a network's latency, in reference
units, is `intercept + a·Σ units (+ b·unit count) (+ c·Σ weights)`, and where units come in several families (a block
space's dwsep, mbconv, factorized …) optionally `+ Σ_f d_f·Σ units of family f`: a family that runs slower or faster
inside a network than alone gets its own slope, each `d_f` shrunk towards zero by a ridge penalty so a family seen in
few networks keeps the common one. Which terms and penalty a table keeps is decided by measurement — the form with
the lowest leave-one-out error of the predicted *speed-up* over the fit networks, so a term is kept only where it
predicts networks it was not fitted on better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TERMS = ("units", "count", "weights")
FORMS = (("units",), ("units", "count"), ("units", "weights"), ("units", "count", "weights"))
WEIGHTS_SCALE = 1e-5  # weights enter the fit per 100k, so every coefficient is of the same order
FAMILY = "units."  # a feature per unit family (`block`): the Σ units of that family alone
RIDGE = (0.1, 1.0, 10.0)  # penalties tried on the family terms, times the fit networks' mean (Σ units)²


@dataclass
class UnitSum:
    """A network's units as the table sees them: Σ relative latency, unit count, Σ weights, and the units that
    were not measured (estimated from their family) or cannot be predicted at all (missing)."""

    total: float
    count: int
    weights: float
    missing: list[str] = field(default_factory=list)
    estimated: list[str] = field(default_factory=list)
    families: dict[str, float] = field(default_factory=dict)

    def features(self) -> dict[str, float]:
        return {"units": self.total, "count": float(self.count), "weights": self.weights * WEIGHTS_SCALE,
                **{FAMILY + name: rel for name, rel in self.families.items()}}


@dataclass
class TableModel:
    """`intercept + Σ coef[term] · feature[term]` in reference units, fitted on `networks` whole networks; where
    that reaches zero or below (a network far from those it was fitted on) the prediction is `ratio × Σ units`,
    the fit networks' measured over summed latency. `loo_mape`: the leave-one-out error of the speed-up (%)."""

    intercept: float = 0.0
    coef: dict[str, float] = field(default_factory=lambda: {"units": 1.0})
    ratio: float = 1.0
    networks: int = 0
    loo_mape: float | None = None

    def apply(self, s: UnitSum) -> float:
        return self.value(s.features())

    def value(self, feats: dict[str, float]) -> float:
        """The model at a network's features (see `UnitSum.features`)."""
        value = self.intercept + sum(c * feats.get(t, 0.0) for t, c in self.coef.items())
        return value if value > 0 else self.ratio * feats["units"]

    def describe(self) -> str:
        terms = " ".join(f"{c:+.4g}·{t}" for t, c in self.coef.items())
        return f"{self.intercept:+.4g} {terms}"


@dataclass
class SelfCheck:
    """How well the table predicted the speed-up of networks it was not fitted on, at build time."""

    networks: int
    mape: float
    max_error: float
    spearman: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.mape <= self.threshold


def _design(features: list[dict[str, float]], form: tuple[str, ...]) -> np.ndarray:
    return np.array([[1.0] + [f.get(t, 0.0) for t in form] for f in features])


def _solve(a: np.ndarray, y: np.ndarray, form: tuple[str, ...], ratio: float, n: int,
           penalty: float = 0.0) -> TableModel | None:
    """Least squares of `form` on the rows `a`; family terms (`units.<block>`, deviations from the common `units`
    coefficient) shrunk towards zero by a ridge `penalty`."""
    if penalty > 0:
        ridge = np.diag([penalty if t.startswith(FAMILY) else 0.0 for t in ("1", *form)])
        coef = np.linalg.solve(a.T @ a + ridge, a.T @ y)
    else:
        coef = np.linalg.lstsq(a, y, rcond=None)[0]
    terms = dict(zip(form, (float(c) for c in coef[1:])))
    slopes = [terms["units"] + c for t, c in terms.items() if t.startswith(FAMILY)] + [terms["units"]]
    if min(slopes) <= 0:  # latency must grow with the units of every family
        return None
    return TableModel(float(coef[0]), terms, ratio, n)


def _speedup_error(model: TableModel, anchor: dict[str, float], net: dict[str, float], speedup: float) -> float:
    predicted = model.value(anchor) / model.value(net)
    return abs(predicted - speedup) / speedup


def fit_model(features: list[dict[str, float]], speedups: list[float], anchor: dict[str, float],
              anchor_rel: float) -> TableModel:
    """Fit a table's model on whole networks: `features` of each (see `UnitSum.features`), its measured speed-up
    over the anchor network, the anchor's features and its measured time in reference units. The anchor itself is
    one of the fit points. With five or more networks the form is chosen by leave-one-out speed-up error; with
    fewer, Σ units alone."""
    if not features:
        return TableModel(0.0, {"units": anchor_rel / anchor["units"] if anchor["units"] > 0 else 1.0}, 1.0, 0)
    rows = [anchor, *features]
    targets = np.array([anchor_rel] + [anchor_rel / s for s in speedups])
    units = np.array([r["units"] for r in rows])
    ratio = float(targets.sum() / units.sum()) if units.sum() > 0 else 1.0
    forms = [(f, 0.0) for f in FORMS if all(len({round(r[t], 9) for r in rows}) > 1 for t in f)] or [(("units",), 0.0)]
    families = sorted({t for r in rows for t in r if t.startswith(FAMILY)})
    if len(families) > 1:  # each family its own slope, shrunk towards the common one; how hard, chosen below
        scale = float(np.mean(units ** 2))
        forms += [((*form, *families), lam * scale) for form, _ in forms for lam in RIDGE]
    if len(features) < 5:
        forms = [(("units",), 0.0)]
    best: tuple[float, TableModel] | None = None
    for form, penalty in forms:
        a = _design(rows, form)
        errors = []
        for i in range(1, len(rows)):  # leave each network out; the anchor always stays
            keep = np.arange(len(rows)) != i
            model = _solve(a[keep], targets[keep], form, ratio, len(rows) - 1, penalty)
            errors.append(math.inf if model is None else _speedup_error(model, anchor, rows[i], speedups[i - 1]))
        loo = float(np.mean(errors) * 100) if len(features) >= 2 else 0.0
        model = _solve(a, targets, form, ratio, len(features), penalty)
        if model is not None and (best is None or loo < best[0]):
            best = (loo, model)
    if best is None:
        return TableModel(0.0, {"units": ratio}, ratio, len(features))
    best[1].loo_mape = best[0] if math.isfinite(best[0]) else None
    return best[1]
