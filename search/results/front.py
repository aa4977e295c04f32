"""The accuracy / latency Pareto front of a study, defined once: the completed, feasible trials (with multi-fidelity,
those at the top rung) that no other such trial dominates. The progress bar, `status`, `pareto`, the artifact
store and export all ask here."""

from __future__ import annotations

from functools import cached_property
from typing import Iterable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.results.record import TrialRecord, evaluated


def pareto_mask(accuracy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """True where no other point is at least as accurate and as fast, and strictly better in one."""
    acc = np.asarray(accuracy, dtype=float)
    lat = np.asarray(latency, dtype=float)
    mask = np.ones(len(acc), dtype=bool)
    for i in range(len(acc)):
        dominated = (acc >= acc[i]) & (lat <= lat[i]) & ((acc > acc[i]) | (lat < lat[i]))
        mask[i] = not dominated.any()
    return mask


def hypervolume(accuracy: Iterable[float], latency: Iterable[float], ref_latency: float,
                ref_accuracy: float = 0.0) -> float:
    """Area dominated by the points, bounded by (ref_accuracy, ref_latency): larger is better."""
    pts = [(lat, acc) for acc, lat in zip(accuracy, latency) if lat < ref_latency and acc > ref_accuracy]
    area, best_acc = 0.0, ref_accuracy
    for lat, acc in sorted(pts):
        if acc > best_acc:
            area += (ref_latency - lat) * (acc - best_acc)
            best_acc = acc
    return float(area)


def contenders(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that may be on the front: completed, feasible, and (multi-fidelity) at the top rung."""
    out = []
    for t in trials:
        record = TrialRecord.of(t) if t.state == TrialState.COMPLETE else None
        if record is not None and record.is_feasible and record.at_top:
            out.append(t)
    return out


def front_of(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The non-dominated contenders among `trials`, fastest first."""
    pool = contenders(trials)
    if not pool:
        return []
    mask = pareto_mask(np.array([t.values[0] for t in pool]), np.array([t.values[1] for t in pool]))
    return sorted((t for t, keep in zip(pool, mask) if keep), key=lambda t: (t.values[1], -t.values[0]))


class FinishedTrial:
    """A study just after one of its trials finished, read from its storage once: what the trial's callbacks
    (budget, failure streak, artifact store, progress bar) ask of it — its trials, how many candidates are
    evaluated, the front — is computed once and shared, not scanned again by each of them."""

    def __init__(self, study: optuna.Study, trial: FrozenTrial, trials: list[FrozenTrial] | None = None) -> None:
        self.study = study
        self.trial = trial
        self.trials = study.get_trials(deepcopy=False) if trials is None else trials

    @cached_property
    def evaluated(self) -> int:
        """How many candidates the study has evaluated (the count `search.trials` asks for)."""
        return sum(evaluated(t) for t in self.trials)

    @cached_property
    def front(self) -> list[FrozenTrial]:
        """The study's front, fastest first."""
        return front_of(self.trials)


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's front, fastest first."""
    return front_of(study.get_trials(deepcopy=False))


def front_numbers(study: optuna.Study) -> set[int]:
    """Numbers of the trials on the study's front."""
    return {t.number for t in front_trials(study)}


def dominated(study: optuna.Study, accuracy: float, latency_ms: float) -> bool:
    """Whether a contender of the study is at least as good as (accuracy, latency_ms) on both objectives and
    better on one."""
    pool = contenders(study.get_trials(deepcopy=False))
    acc = np.array([t.values[0] for t in pool] + [accuracy])
    lat = np.array([t.values[1] for t in pool] + [latency_ms])
    return not pareto_mask(acc, lat)[-1]


def provisional(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Multi-fidelity: the candidates below the top rung — stopped there, or still running — whose accuracy at the
    rung they reached is not dominated by the top-rung front. Where the front may still move, not a result. A trial
    waiting to run is none of these, even where it inherits the record of the dead trial it runs again."""
    trials = list(trials)
    top = contenders(trials)
    below = []
    for t in trials:
        record = TrialRecord.of(t)
        if t.state not in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
            continue  # failed, or queued again after its worker died and not yet run: it carries the dead one's record
        below_top = record.rungs and record.top_rung is not None and len(record.rungs) <= record.top_rung
        if below_top and record.is_feasible and record.latency_ms is not None:
            below.append((t, float(record.rungs[-1]["accuracy"]), record.latency_ms))
    if not below:
        return []
    acc = np.array([t.values[0] for t in top] + [a for _, a, _ in below])
    lat = np.array([t.values[1] for t in top] + [latency for _, _, latency in below])
    mask = pareto_mask(acc, lat)[len(top):]
    return [t for (t, _, _), keep in zip(below, mask) if keep]
