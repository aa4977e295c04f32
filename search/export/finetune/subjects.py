"""What a long fine-tune trains: a trial's network, rebuilt from the run (at the weights the search fine-tuned, or as
its candidate builds it), or a network cut from the run's base by other means (a baseline of a benchmark) — each with
the teacher it distils from, the seed it trains with, and the card fields that say which network it is."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from optuna.trial import FrozenTrial

from search.export.files import stored_weights
from search.results.artifacts import WEIGHTS
from search.results.record import TrialRecord
from search.trial.checkpoints import root_number
from search.trial.context import StudyContext
from search.trial.scoring import Scoring


@dataclass
class Subject:
    """A network to fine-tune. `build()`: the network a checkpoint loads into; `start(model, tmp)`: put the starting
    weights into it and say what they are; `card`: the fields naming it on its card."""

    label: str
    candidate: dict[str, Any] | None
    seed: int
    teacher: nn.Module | None
    card: dict[str, Any]
    build: Callable[[], nn.Module]
    start: Callable[[nn.Module, Path], str]


def trial_identity(study_name: str, trial: FrozenTrial) -> dict[str, Any]:
    """Which network of which run a trial's fine-tune trains: the study, the trial (and when it began: a run started
    again under the same name is another run) and its candidate."""
    return {"study": study_name, "trial": trial.number, "trial_started": str(trial.datetime_start),
            "candidate": TrialRecord.of(trial).candidate}


def trial_subject(ctx: StudyContext, scoring: Scoring, trial: FrozenTrial, how: str, start: str,
                  say: Callable[[str], None]) -> Subject:
    """A trial's network, built as the study built it (its seed), starting from the weights the search fine-tuned
    where `start` is `searched` and the trial kept them (front trials do), else as built and prepared as the study
    prepares a candidate."""
    config, record = ctx.config, TrialRecord.of(trial)
    candidate, seed = record.candidate, ctx.config.seed + root_number(trial)

    def build() -> nn.Module:
        torch.manual_seed(seed)  # the initial weights the trial's network was built with
        return ctx.space.build(candidate)

    def begin(model: nn.Module, tmp: Path) -> str:
        if start == "searched":
            if stored_weights(trial, config.run_dir, tmp):
                model.load_state_dict(torch.load(tmp / WEIGHTS, map_location="cpu", weights_only=True))
                return f"the weights the search fine-tuned ({record.accuracy:.4f} validation in the study)"
            say(f"trial #{trial.number} kept no weights (only trials on the front do): starting from its network as "
                "built")
        return prepared(scoring, model, seed, "its candidate as built")

    card = {"study": config.name, "trial": trial.number, "chosen_by": how,
            "description": ctx.space.describe(candidate), "candidate": candidate,
            "search": {"accuracy": record.accuracy, "latency_ms": trial.values[1], "screened": record.screened}}
    return Subject(f"trial #{trial.number}", candidate, seed, ctx.space.teacher_for(candidate), card, build, begin)


def network_subject(ctx: StudyContext, scoring: Scoring, network: nn.Module, name: str) -> Subject:
    """A network cut from the run's base by other means, named `name`: prepared as the study prepares a candidate,
    distilled from the run's teacher."""
    seed = ctx.config.seed
    card = {"study": ctx.config.name, "trial": None, "network": name, "chosen_by": "finetune_network (Python API)",
            "description": name, "candidate": None, "search": None}
    return Subject(name, None, seed, ctx.space.teacher, card, lambda: copy.deepcopy(network),
                   lambda model, _: prepared(scoring, model, seed, "the network as given"))


def prepared(scoring: Scoring, model: nn.Module, seed: int, what: str) -> str:
    """Prepare `model` as the study prepares a candidate before its fine-tune; says what it then is."""
    measured = scoring.prepare(model, seed)
    if "accuracy_adaptive_bn" in measured:
        return f"{what}, BatchNorm recalibrated (adaptive BN: {measured['accuracy_adaptive_bn']:.4f} validation)"
    return f"{what}, at its initial weights"
