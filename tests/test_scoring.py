"""The scoring layer: comparisons with the base, the failure cap, the record schema, and a new kind of space
that needs one scoring and nothing else to run a study."""

from __future__ import annotations

from typing import Literal

import optuna
import pytest
import torch.nn as nn
import yaml
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict

from evaluators.cost import Cost
from evaluators.latency import LatencyStats
from registry import UnknownName
from search.recipe.config import load_config
from search.results.record import TrialRecord
from search.study.after_trial import AfterTrial, FailureCap
from search.study.executors.inprocess import run_study
from search.trial.scoring import SCORINGS, Scoring, register_scoring
from search.trial.scoring.compressed import versus_base
from spaces import Space, Suggest, register_space
from tests.conftest import tiny_recipe


def test_versus_base_compares_cost_speed_and_accuracy():
    base = {"params": 100_000, "flops": 10**7, "latency_ms": 2.0, "accuracy": 0.9}
    stats = LatencyStats(0.5, 0.6, 0.7, 0.55, 0.1, 100, 10, "onnxruntime", "1", "cpu", "fp32", 1)
    got = versus_base(base, Cost(macs=2_500_000, params=25_000), accuracy=0.85, stats=stats)
    assert got == pytest.approx({"compression": 4.0, "flops_reduction": 0.5, "speedup": 4.0,
                                 "accuracy_change": -0.05})
    stats.extra["interleaved"] = {"speedup": 3.6, "low": 3.5, "high": 3.8}
    paired = versus_base(base, Cost(macs=2_500_000, params=25_000), accuracy=0.85, stats=stats)
    assert (paired["speedup"], paired["speedup_low"], paired["speedup_high"]) == (3.6, 3.5, 3.8)


def test_the_failure_cap_stops_a_study_on_a_streak_and_a_success_resets_it():
    outcomes = iter("FFCFPFFF" + "C" * 12)  # fail, complete, pruned; a streak of three fails stops the study

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        outcome = next(outcomes)
        if outcome == "F":
            TrialRecord().save(trial, error=f"boom {trial.number}")
            raise RuntimeError("boom")
        if outcome == "P":
            raise optuna.TrialPruned()
        return 0.5, 1.0

    study = optuna.create_study(directions=["maximize", "minimize"])
    cap = FailureCap(3)
    study.optimize(objective, n_trials=20, catch=(RuntimeError,), callbacks=[AfterTrial(cap)])
    assert cap.tripped and len(study.trials) == 8 and cap.last_error == "boom 7"


def test_the_record_reads_back_what_it_saved_and_refuses_unknown_fields():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    record = TrialRecord()
    record.save(trial, candidate={"w": 8}, latency={"median_ms": 0.25}, feasible=False)
    with pytest.raises(AttributeError, match="no field 'acurracy'"):
        record.save(trial, acurracy=0.5)
    study.tell(trial, (0.5, 0.25))
    back = TrialRecord.of(study.trials[0])
    assert back.candidate == {"w": 8} and back.latency_ms == 0.25 and not back.is_feasible
    assert back == record


class WidthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["width_only"] = "width_only"
    widths: list[int] = [8, 16]


@register_space("width_only")
class WidthSpace(Space):
    """One conv layer of a searched width: the smallest space there is."""

    Config = WidthConfig

    def __init__(self, config: WidthConfig, *, in_channels: int, num_classes: int, image_size: int) -> None:
        self.config, self.in_channels, self.num_classes = config, in_channels, num_classes

    def sample(self, suggest: Suggest) -> dict:
        return {"width": suggest.categorical("width", self.config.widths)}

    def build(self, candidate: dict) -> nn.Module:
        w = candidate["width"]
        return nn.Sequential(nn.Conv2d(self.in_channels, w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(w, self.num_classes))


def test_a_new_kind_of_space_runs_a_study_with_one_scoring_and_no_other_change(tmp_path):
    raw = tiny_recipe(tmp_path, **{"search.trials": 2, "search.sampler": "random"})
    raw["space"] = {"type": "width_only", "widths": [8, 16]}
    path = tmp_path / "width.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UnknownName, match="unknown scoring 'width_only'; known scorings: blocks, compress"):
        run_study(load_config(path), show_progress=False)
    register_scoring("width_only")(type("WidthScoring", (Scoring,), {}))
    try:
        study = run_study(load_config(path, ["name=width-2"]), show_progress=False)
    finally:
        del SCORINGS["width_only"]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2
    for t in done:
        record = TrialRecord.of(t)
        assert record.candidate["width"] in (8, 16) and record.accuracy == t.values[0]
        assert record.latency_ms == t.values[1] and record.params > 0
