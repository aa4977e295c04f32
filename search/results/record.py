"""The record a trial keeps of its candidate: one typed schema for the user attributes of every trial.

The objective writes it (field by field, as each value becomes known, so a trial that fails keeps what it
had); `status`, `pareto`, the progress bar, export, the dashboard and the benchmarks read it back with
`TrialRecord.of(trial)`. The field names are the user-attribute names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


@dataclass
class TrialRecord:
    """What one trial measured. Every field is optional: a trial stores what it got to."""

    candidate: dict[str, Any] | None = None  # the JSON that rebuilds the network (`space.build`)
    base_l1: float | None = None  # compress space with sparsity training: λ of the base it was cut from
    macs: int | None = None  # fvcore, one image
    flops: int | None = None
    params: int | None = None
    predicted_latency_ms: float | None = None  # from the study's latency table, before training
    predicted_speedup: float | None = None  # the same, as a speed-up over the table's reference network (the base)
    latency_check: dict[str, Any] | None = None  # predicted against measured speed-up, where both exist
    latency_table_missing: list[str] | None = None  # units the table had no entry for
    screened: str | None = None  # why the candidate was not fine-tuned: its predicted latency misses the target
    accuracy_adaptive_bn: float | None = None  # compress space: after BatchNorm recalibration, untrained
    accuracy: float | None = None  # validation accuracy at the candidate's precision: the first objective
    accuracy_fp32: float | None = None  # compress space, lower precision: the fp32 model's accuracy
    train_loss: float | None = None  # last fine-tune loss
    latency: dict[str, Any] | None = None  # LatencyStats: median_ms (the second objective), p90_ms, ...
    vs_base: dict[str, float] | None = None  # compress space: compression, flops_reduction, speedup, accuracy_change
    constraints: dict[str, float] | None = None  # one value per recipe constraint, <= 0 when met
    feasible: bool | None = None  # None: the study has no constraints
    rungs: list[dict[str, Any]] | None = None  # multi-fidelity: per rung reached, its epochs, accuracy, seconds
    rung: int | None = None  # multi-fidelity: the rung it reached (0-based)
    top_rung: int | None = None  # multi-fidelity: the study's top rung
    stopped: str | None = None  # multi-fidelity: why it went no further than `rung`
    seconds: dict[str, float] = field(default_factory=dict)  # build, cost, train, latency, ..., total
    anchor: bool = False  # a uniform policy queued first (compress space)
    error: str | None = None  # why the trial failed or was pruned

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> "TrialRecord":
        """The record stored on `trial` (attributes the schema does not know are ignored)."""
        attrs = trial.user_attrs
        return cls(**{f.name: attrs[f.name] for f in dataclasses.fields(cls) if f.name in attrs})

    def save(self, trial: optuna.Trial, **values: Any) -> None:
        """Set `values` on the record and store them on the running trial."""
        for name, value in values.items():
            if name not in _FIELDS:
                raise AttributeError(f"TrialRecord has no field {name!r}")
            setattr(self, name, value)
            trial.set_user_attr(name, value)

    @staticmethod
    def save_to(storage: optuna.storages.BaseStorage, trial_id: int, **values: Any) -> None:
        """Store record `values` on a trial by its storage id (for a process that holds no `Trial`)."""
        for name, value in values.items():
            if name not in _FIELDS:
                raise AttributeError(f"TrialRecord has no field {name!r}")
            storage.set_trial_user_attr(trial_id, name, value)

    @property
    def is_feasible(self) -> bool:
        """Whether the trial met the recipe's constraints (trials of unconstrained studies always do)."""
        return self.feasible is not False

    @property
    def at_top(self) -> bool:
        """Whether the candidate had the whole fine-tune (always, without multi-fidelity)."""
        return self.rung is None or self.rung == self.top_rung

    @property
    def latency_ms(self) -> float | None:
        """The measured median latency, else the latency the study's table predicted (a candidate screened, or
        stopped at a first rung of 0 epochs, is never timed)."""
        if self.latency is not None:
            return float(self.latency["median_ms"])
        return self.predicted_latency_ms


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialRecord))


def evaluated(trial: FrozenTrial) -> bool:
    """Whether a finished trial scored its candidate: completed, or stopped below the top rung of a multi-fidelity
    study (pruned, with the rung it reached, under `search.fidelity.report: top`)."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.PRUNED and TrialRecord.of(trial).rung is not None
