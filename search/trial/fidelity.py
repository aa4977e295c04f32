"""Asynchronous successive halving on the accuracy / latency front: which candidate goes on to the next rung.

A candidate that has been scored at rung r is compared, there and then, with every candidate of the study
that has reached rung r so far (running ones included; no worker waits for a rung to fill, as in ASHA). They
are sorted by non-dominated sorting on (accuracy at rung r, latency) — the first front, then the front of what
is left, and so on — and within a front by hypervolume contribution, largest first. The candidate is promoted
when it is among the first max(1, ⌊n/η⌋) of the n in that order, and the next rung is not full. The recipe's
anchor policies go on whatever their place: they are the references a study's front must not fall behind, and
an early rung's quota, small while few candidates have been scored, would otherwise stop them.

Why hypervolume contribution breaks the ties: the study is judged by the hypervolume of its final front, and a
point's contribution is exactly the area the front would lose without it. Crowding distance (NSGA-II) would
instead rank both ends of every front first whatever they add, so a slightly faster but far less accurate
candidate would always go on. The reference point is accuracy 0 and 1.1 × the slowest candidate at the rung.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.recipe.sections import FidelityConfig
from search.results.front import hypervolume, pareto_mask
from search.results.record import TrialRecord

_ALIVE = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class RungPoint:
    """A candidate as it stands at one rung: its trial, accuracy there and latency."""

    trial: int
    accuracy: float
    latency_ms: float


def reached(trials: Iterable[FrozenTrial], rung: int) -> list[RungPoint]:
    """The feasible candidates that have a result at `rung`, at their latency predicted by the study's table where
    it has one (so candidates timed at the top and those not yet timed compare alike), else measured. Failed
    trials are left out: a trial killed mid-rung is retried as another trial that carries its results, so each
    candidate counts once."""
    points = []
    for t in trials:
        if t.state not in _ALIVE:
            continue
        record = TrialRecord.of(t)
        latency = record.latency_ms if record.predicted_latency_ms is None else record.predicted_latency_ms
        if not record.rungs or len(record.rungs) <= rung or latency is None or not record.is_feasible:
            continue
        points.append(RungPoint(t.number, float(record.rungs[rung]["accuracy"]), latency))
    return points


def entered(trials: Iterable[FrozenTrial], rung: int) -> int:
    """How many candidates have been promoted to `rung` or beyond (those still training there included)."""
    return sum(1 for t in trials if t.state in _ALIVE and (TrialRecord.of(t).rung or 0) >= rung)


def nondominated_layers(points: list[RungPoint]) -> list[list[RungPoint]]:
    """The points sorted into fronts: the non-dominated ones, then those of the rest, and so on."""
    layers, rest = [], list(points)
    while rest:
        mask = pareto_mask(np.array([p.accuracy for p in rest]), np.array([p.latency_ms for p in rest]))
        layers.append([p for p, keep in zip(rest, mask) if keep])
        rest = [p for p, keep in zip(rest, mask) if not keep]
    return layers


def contributions(layer: list[RungPoint], ref_latency: float) -> list[float]:
    """Each point's hypervolume contribution to its layer: the area the layer loses without it."""
    acc = [p.accuracy for p in layer]
    lat = [p.latency_ms for p in layer]
    whole = hypervolume(acc, lat, ref_latency)
    return [whole - hypervolume(acc[:i] + acc[i + 1:], lat[:i] + lat[i + 1:], ref_latency) for i in range(len(layer))]


def promotion_order(points: list[RungPoint]) -> list[RungPoint]:
    """The points best first: by non-dominated layer, then by hypervolume contribution, then by trial number."""
    if not points:
        return []
    ref = 1.1 * max(p.latency_ms for p in points)
    order = []
    for layer in nondominated_layers(points):
        gain = contributions(layer, ref)
        order += [p for _, p in sorted(zip(gain, layer), key=lambda gp: (-gp[0], gp[1].trial))]
    return order


@dataclass(frozen=True)
class Decision:
    """Whether a candidate goes on to the next rung, and why (stored as `stopped` when it does not)."""

    promote: bool
    reason: str


def decide(study: optuna.Study, trial_number: int, rung: int, cfg: FidelityConfig) -> Decision:
    """Promote the candidate of `trial_number` from `rung` to the next, or stop it there."""
    trials = study.get_trials(deepcopy=False)
    points = reached(trials, rung)
    order = [p.trial for p in promotion_order(points)]
    if trial_number not in order:
        return Decision(False, f"not among the feasible candidates of rung {rung}")
    quota = max(1, math.floor(len(points) / cfg.eta))
    place = order.index(trial_number) + 1
    anchor = any(t.number == trial_number and TrialRecord.of(t).anchor for t in trials)
    if place > quota and not anchor:
        return Decision(False, f"placed {place} of {len(points)} at rung {rung}; the best {quota} (1/{cfg.eta:g}) go on")
    cap = cfg.cap(rung + 1)
    if cap is not None and entered(trials, rung + 1) >= cap:
        return Decision(False, f"rung {rung + 1} is full ({cap} candidates, search.fidelity.max_per_rung)")
    return Decision(True, f"placed {place} of {len(points)} at rung {rung}" + (", an anchor" if anchor else ""))
