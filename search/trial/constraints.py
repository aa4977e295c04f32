"""Recipe constraints (max latency, max params, min accuracy): which trials are feasible.

A trial sets one Optuna constraint per recipe limit (`Trial.set_constraint`, which TPE, GP and NSGA-II
read to steer away from infeasible regions — Optuna 5's replacement of `constraints_func`), and
the trial's record keeps the same values as `constraints` and the verdict as `feasible`, which the front,
the reports and optuna-dashboard read.
"""

from __future__ import annotations

import optuna

from search.recipe.sections import ConstraintsConfig
from search.results.record import TrialRecord

NAMES = ("latency_ms", "speedup", "params", "accuracy")


def active(cfg: ConstraintsConfig) -> list[str]:
    """The names of the constraints the recipe sets, in a fixed order."""
    return [name for name in NAMES if getattr(cfg, name) is not None]


def violations(cfg: ConstraintsConfig, *, accuracy: float, latency_ms: float, params: int,
               base_latency_ms: float | None = None, budget_ms: float | None = None) -> dict[str, float]:
    """One value per set constraint, ≤ 0 when it is met: relative excess for latency and params
    ((value - limit) / limit; a speed-up's limit is the base's latency over it; `budget_ms`, the recipe's
    `latency.budget_ms`, is one more latency limit), and the shortfall for accuracy (limit - accuracy)."""
    out: dict[str, float] = {}
    if budget_ms is not None:
        out["budget_ms"] = (latency_ms - budget_ms) / budget_ms
    if cfg.latency_ms is not None:
        out["latency_ms"] = (latency_ms - cfg.latency_ms) / cfg.latency_ms
    if cfg.speedup is not None:
        if base_latency_ms is None:
            raise ValueError("constraints.speedup needs the base network's latency (a compress study)")
        limit = base_latency_ms / cfg.speedup
        out["speedup"] = (latency_ms - limit) / limit
    if cfg.params is not None:
        out["params"] = (params - cfg.params) / cfg.params
    if cfg.accuracy is not None:
        out["accuracy"] = cfg.accuracy - accuracy
    return out


def apply_constraints(
    trial: optuna.Trial, record: TrialRecord, cfg: ConstraintsConfig, *, accuracy: float, latency_ms: float,
    params: int, base_latency_ms: float | None = None, budget_ms: float | None = None,
) -> bool:
    """Set the constraints on a running trial (for the sampler) and store them with the verdict on its record
    (`constraints`, `feasible`); no-op without constraints. Returns whether the trial is feasible."""
    if not active(cfg) and budget_ms is None:
        return True
    values = violations(cfg, accuracy=accuracy, latency_ms=latency_ms, params=params, base_latency_ms=base_latency_ms,
                        budget_ms=budget_ms)
    for name, value in values.items():
        trial.set_constraint(name, value)
    feasible = all(v <= 0 for v in values.values())
    record.save(trial, constraints=values, feasible=feasible)
    return feasible
