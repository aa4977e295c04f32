"""A multi-fidelity trial: a candidate scored rung by rung, going on only while it is in the best 1/η of its rung.

Latency does not depend on training, so it is known first, for the model as built (after adaptive BN for a
compressed one); a candidate over a latency or parameter constraint stops there, untrained. Where the first rung
is 0 epochs (screening by adaptive BN) and the study has a latency table, that first latency is the table's
prediction — no export, no engine session — and the engine times the candidate once, on its final export, only
if it reaches the top rung; rung 0 then costs a build, a BatchNorm recalibration and one evaluation. Without a
table the engine times the built model first. Then the fine-tune
— one plan for the top rung's epochs, a one-cycle schedule over the whole budget — runs up to each rung's epochs
in turn; after each rung the candidate is scored at its precision, the result is stored on its record and in a
checkpoint, and `search.trial.fidelity.decide` says whether it goes on. A promoted candidate continues the same
fine-tune from where it stood (weights, optimizer, schedule, data order), so a candidate that reaches the top has
had exactly the fine-tune of a single-fidelity study. Cutting one schedule at the rungs, rather than running a
fresh schedule per rung, is what makes the rungs add up honestly; the price is that lower rungs are scored
mid-schedule, at a higher learning rate, which the benchmark's per-rung rank correlations measure.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import torch
import torch.nn as nn

from evaluators.cost import Cost
from evaluators.latency import LatencyStats
from evaluators.onnx_model import ExportedModel
from evaluators.train import evaluate
from search.latency.predictor import Prediction
from search.recipe.sections import ConstraintsConfig
from search.results.record import TrialRecord
from search.trial import checkpoints
from search.trial.checkpoints import root_number
from search.trial.constraints import violations
from search.trial.context import StudyContext
from search.trial.fidelity import decide
from search.trial.objective import Objective, Stopped
from spaces import Candidate


def over_before_training(cfg: ConstraintsConfig, latency_ms: float, params: int,
                         base_latency_ms: float | None = None) -> list[str]:
    """The latency, speed-up and parameter constraints a candidate breaks, which no fine-tune can change."""
    values = violations(cfg.model_copy(update={"accuracy": None}), accuracy=0.0, latency_ms=latency_ms, params=params,
                        base_latency_ms=base_latency_ms)
    return [name for name, v in values.items() if v > 0]


class RungObjective(Objective):
    """The objective of a study with `search.fidelity`: scores each candidate in rungs (see the module)."""

    def __init__(self, ctx: StudyContext) -> None:
        super().__init__(ctx)
        self.fidelity = ctx.config.search.fidelity
        self.scoring.check_rungs(self.fidelity.rungs)

    def _evaluate(self, trial: optuna.Trial, record: TrialRecord, candidate: Candidate | None) -> tuple[float, float]:
        values = super()._evaluate(trial, record, candidate)
        if record.stopped and not record.at_top and self.fidelity.report == "top":
            raise Stopped(record.stopped)
        return values

    def score(
        self, trial: optuna.Trial, record: TrialRecord, model: nn.Module, candidate: Candidate, cost: Cost,
        seed: int, tmp: Path, seconds: dict[str, float],
    ) -> tuple[ExportedModel | None, LatencyStats | Prediction]:
        rungs, scoring, run_dir = self.fidelity.rungs, self.scoring, self.config.run_dir
        top, root = len(rungs) - 1, root_number(trial)
        inherited = TrialRecord.of(trial)  # a trial queued again after its worker died carries its record
        saved = checkpoints.load(run_dir, root)
        exported: ExportedModel | None = None
        stats: LatencyStats | Prediction | None
        known = inherited.latency or inherited.predicted_latency_ms
        if saved is not None and known and len(inherited.rungs or []) == saved[0] + 1:
            tune = scoring.fine_tune(model, seed, candidate=candidate)
            tune.load_state_dict(saved[1])
            results = list(inherited.rungs)
            stats = LatencyStats(**inherited.latency) if inherited.latency else self.prediction(record)
            record.save(trial, latency=inherited.latency, predicted_latency_ms=inherited.predicted_latency_ms,
                        predicted_speedup=inherited.predicted_speedup,
                        accuracy_adaptive_bn=inherited.accuracy_adaptive_bn, rungs=results, rung=len(results) - 1, top_rung=top, accuracy=results[-1]["accuracy"])
            if inherited.stopped:
                record.save(trial, stopped=inherited.stopped)
            go_on = inherited.stopped is None and (
                (inherited.rung or 0) >= len(results) or self._promoted(trial, record, len(results) - 1)
            )
        else:
            results, go_on = [], True
            torch.manual_seed(seed)
            record.save(trial, **scoring.prepare(model, seed))
            stats = self.prediction(record) if rungs[0] == 0 else None
            if stats is not None:
                self.attach(trial)  # the base's record, which a predicted speed-up is set against
            else:
                exported = ExportedModel(model, self.ctx.data.input_shape, tmp / "built")
                stats = self.measure(trial, record, exported, candidate, seconds)
            ms = stats.ms if isinstance(stats, Prediction) else stats.median_ms
            over = over_before_training(self.config.constraints, ms, cost.params, self.base_ms(stats))
            if over:
                record.save(trial, accuracy=evaluate(model, scoring.validation()), rung=0, top_rung=top, rungs=[],
                            stopped=f"over the {' and '.join(over)} constraint: stopped untrained")
                return exported, stats
            tune = scoring.fine_tune(model, seed, candidate=candidate)
        seconds["train"] = sum(r["seconds"] for r in results)
        for rung in range(len(results), top + 1 if go_on else 0):
            record.save(trial, rung=rung, top_rung=top)
            t = time.perf_counter()
            if rungs[rung] > 0:
                with self.lock.training() as wait:
                    tune.run_to(rungs[rung])
                seconds["train_wait"] = seconds.get("train_wait", 0.0) + wait
            needs_export = rung == top or scoring.accuracy_precision(candidate) != "fp32"
            if needs_export and (exported is None or tune.step > 0):
                exported = ExportedModel(model, self.ctx.data.input_shape, tmp / f"rung{rung}")
            if rung == top and isinstance(stats, Prediction):
                stats = self.measure(trial, record, exported, candidate, seconds)
            scored = scoring.score(exported, candidate, tune.accuracy(), scoring.validation())
            results.append({"rung": rung, "epochs": rungs[rung], **scored, "seconds": time.perf_counter() - t})
            seconds["train"] += results[-1]["seconds"]
            record.save(trial, rungs=results, train_loss=tune.loss, **scored)
            if rung == top:
                break
            checkpoints.save(run_dir, root, rung, tune.state_dict())
            if not self._promoted(trial, record, rung):
                break
        checkpoints.drop(run_dir, root)
        return exported, stats

    def prediction(self, record: TrialRecord) -> Prediction | None:
        """The candidate's latency as the study's table predicted it (None: no table, or units it cannot predict),
        standing in for a measurement until the candidate reaches the top rung."""
        if record.predicted_latency_ms is None or record.predicted_speedup is None:
            return None
        return Prediction(record.predicted_speedup, record.predicted_latency_ms)

    def _promoted(self, trial: optuna.Trial, record: TrialRecord, rung: int) -> bool:
        """Whether the candidate goes on from `rung`; when it does not, why is stored as `stopped`."""
        decision = decide(trial.study, trial.number, rung, self.fidelity)
        if not decision.promote:
            record.save(trial, stopped=decision.reason)
        return decision.promote
