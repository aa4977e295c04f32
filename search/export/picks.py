"""Which trial to export: by number, or picked from the front by a rule (fastest, most accurate, the knee, a
latency or accuracy threshold)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from search.errors import UsageError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

PICKS = ("fastest", "most-accurate", "knee")
_THRESHOLD = re.compile(r"^\s*(latency|latency_ms|accuracy)\s*(<=|>=)\s*([0-9.eE+-]+)\s*$")


def exportable_front(study: optuna.Study) -> list[FrozenTrial]:
    """The study's front, fastest first; a UsageError when it is empty."""
    from search.results.front import front_trials

    trials = front_trials(study)
    if not trials:
        raise UsageError(f"study {study.study_name!r} has no completed feasible trial yet; nothing to export")
    return trials


def knee(trials: list[FrozenTrial]) -> FrozenTrial:
    """The front trial farthest above the line from the fastest to the most accurate trial, with both
    objectives scaled to [0, 1] over the front (ties: the more accurate)."""
    import numpy as np

    acc = np.array([t.values[0] for t in trials])
    lat = np.array([t.values[1] for t in trials])
    span_acc, span_lat = np.ptp(acc) or 1.0, np.ptp(lat) or 1.0
    gain = (acc - acc.min()) / span_acc - (lat - lat.min()) / span_lat
    best = max(range(len(trials)), key=lambda i: (round(float(gain[i]), 12), acc[i]))
    return trials[best]


def pick_trial(study: optuna.Study, pick: str) -> FrozenTrial:
    """A front trial by rule: fastest, most-accurate, knee, `latency<=X` (the most accurate that fast) or
    `accuracy>=Y` (the fastest that accurate)."""
    trials = exportable_front(study)
    if pick == "fastest":
        return trials[0]
    if pick == "most-accurate":
        return max(trials, key=lambda t: (t.values[0], -t.values[1]))
    if pick == "knee":
        return knee(trials)
    match = _THRESHOLD.match(pick)
    if not match or (match[1] == "accuracy") != (match[2] == ">="):
        raise UsageError(
            f"--pick {pick!r}: expected one of {', '.join(PICKS)}, 'latency<=MS' or 'accuracy>=A' "
            "(e.g. 'latency<=0.05')"
        )
    limit = float(match[3])
    if match[1] == "accuracy":
        ok = [t for t in trials if t.values[0] >= limit]
        chosen = min(ok, key=lambda t: t.values[1]) if ok else None
    else:
        ok = [t for t in trials if t.values[1] <= limit]
        chosen = max(ok, key=lambda t: t.values[0]) if ok else None
    if chosen is None:
        shown = ", ".join(f"#{t.number} ({t.values[0]:.4f}, {t.values[1]:.4f} ms)" for t in trials)
        raise UsageError(f"--pick {pick!r}: no trial on the front meets it; the front is {shown}")
    return chosen


def choose_trial(study: optuna.Study, number: int | None, pick: str | None) -> FrozenTrial:
    """The trial named by `--trial N`, or the one `--pick` selects from the front."""
    from optuna.trial import TrialState

    if number is None:
        return pick_trial(study, pick or "knee")
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise UsageError(f"--trial {number}: study {study.study_name!r} has no such trial (0..{len(study.trials) - 1})")
    if found[0].state != TrialState.COMPLETE:
        raise UsageError(f"--trial {number}: the trial is {found[0].state.name.lower()}, not complete")
    return found[0]
