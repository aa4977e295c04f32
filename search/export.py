"""Export a chosen trial: its weights, ONNX file, a TensorRT engine where one can be built, and a model card.

Everything on the card is measured again at export, the way the study measured it: accuracy on the
validation split (which must match the trial's: the same weights on the same images) and on the
held-out test split, latency on the study's backend at the study's (or a compressed candidate's)
precision, FLOPs and parameters; the ONNX file is checked against PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import torch
import torch.nn as nn
import yaml
from optuna.trial import FrozenTrial, TrialState

from evaluators.cost import measure_cost
from evaluators.latency import AVAILABILITY, BACKENDS, BackendUnavailable, LatencyStats, get_backend
from evaluators.data import Split
from evaluators.onnx_export import OPSET, export_onnx
from evaluators.precision import calibration_batches, convert_precision, onnx_accuracy
from evaluators.train import evaluate, train_model
from search.artifacts import WEIGHTS, artifact_store, fetch, front_numbers, trial_artifacts
from search.card import write_card
from search.compress_eval import compress_trial, versus_base
from search.config import StudyConfig, validate_config
from search.errors import UsageError
from search.objective import train_settings
from search.runner import StudyContext, build_context, build_space, recipe_data

PICKS = ("fastest", "most-accurate", "knee")
ONNX_TOLERANCE = 1e-4
_THRESHOLD = re.compile(r"^\s*(latency|latency_ms|accuracy)\s*(<=|>=)\s*([0-9.eE+-]+)\s*$")


def _front(study: optuna.Study) -> list[FrozenTrial]:
    numbers = front_numbers(study)
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number in numbers]
    if not trials:
        raise UsageError(f"study {study.study_name!r} has no completed feasible trial yet; nothing to export")
    return sorted(trials, key=lambda t: t.values[1])


def knee(trials: list[FrozenTrial]) -> FrozenTrial:
    """The front trial farthest above the line from the fastest to the most accurate trial, with both
    objectives scaled to [0, 1] over the front (ties: the more accurate)."""
    acc = np.array([t.values[0] for t in trials])
    lat = np.array([t.values[1] for t in trials])
    span_acc, span_lat = np.ptp(acc) or 1.0, np.ptp(lat) or 1.0
    gain = (acc - acc.min()) / span_acc - (lat - lat.min()) / span_lat
    best = max(range(len(trials)), key=lambda i: (round(float(gain[i]), 12), acc[i]))
    return trials[best]


def pick_trial(study: optuna.Study, pick: str) -> FrozenTrial:
    """A front trial by rule: fastest, most-accurate, knee, `latency<=X` (the most accurate that fast) or
    `accuracy>=Y` (the fastest that accurate)."""
    trials = _front(study)
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
    if number is None:
        return pick_trial(study, pick or "knee")
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise UsageError(f"--trial {number}: study {study.study_name!r} has no such trial (0..{len(study.trials) - 1})")
    if found[0].state != TrialState.COMPLETE:
        raise UsageError(f"--trial {number}: the trial is {found[0].state.name.lower()}, not complete")
    return found[0]


def load_weights(study: optuna.Study, trial: FrozenTrial, run_dir: Path, model: nn.Module, tmp: Path) -> None:
    """Load the trial's stored state_dict into `model`; a clear error when it has none."""
    path = tmp / WEIGHTS
    if not fetch(trial, WEIGHTS, artifact_store(run_dir), path):
        kept = [t.number for t in _front(study) if WEIGHTS in trial_artifacts(t)]
        raise UsageError(
            f"trial #{trial.number} has no stored weights: only trials on the front keep them, and they are "
            f"dropped when a trial leaves it. Trials with weights: {', '.join(f'#{n}' for n in kept) or 'none'}"
        )
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def onnx_difference(onnx_path: Path, model: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the ONNX Runtime and the PyTorch outputs on the batch `x`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(got - expected).max())


def tensorrt_engine(
    onnx_path: Path, out: Path, ctx: StudyContext, precision: str, calibration: list[np.ndarray] | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Build the TensorRT engine of the exported ONNX at `precision` and time it; a note instead when
    TensorRT cannot run here."""
    why = AVAILABILITY["tensorrt"]() if "tensorrt" in BACKENDS else "no tensorrt latency backend is registered"
    if why:
        say(f"no TensorRT engine written: {why}")
        return {"note": f"not built: {why}"}
    with tempfile.TemporaryDirectory() as cache:
        try:
            backend = get_backend("tensorrt", cache_dir=cache)
            stats = backend.measure(onnx_path, ctx.data.input_shape, precision, ctx.config.latency.batch_size,
                                    calibration)
        except (BackendUnavailable, RuntimeError, ValueError) as exc:
            say(f"no TensorRT engine written: {type(exc).__name__}: {exc}")
            return {"note": f"not built: {type(exc).__name__}: {exc}"}
        plans = sorted((Path(cache) / "engines").glob("*.engine"))
        shutil.copyfile(plans[-1], out / "model.engine")
    return {"file": "model.engine", "median_ms": stats.median_ms, "p90_ms": stats.p90_ms, "device": stats.device,
            "backend_version": stats.backend_version, "precision": stats.precision, "batch_size": stats.batch_size}


class Scorer:
    """Scores a model as the study scored its trials: PyTorch on the validation split, or, for a compressed
    candidate at fp16 / int8, ONNX Runtime at that precision; latency at the precision the study timed."""

    def __init__(self, config: StudyConfig, ctx: StudyContext, candidate: dict[str, Any], seed: int) -> None:
        self.config, self.ctx, self.seed = config, ctx, seed
        self.settings = train_settings(config)
        self.val = ctx.data.val.subset(self.settings.max_eval_samples, seed)
        compress = compress_trial(config, ctx.space, ctx.data, ctx.backend)
        self.calibration: list[np.ndarray] | None
        if compress is not None:
            self.precision = self.accuracy_precision = candidate.get("precision", "fp32")
            self.calibration = compress.calibration
        else:
            self.precision, self.accuracy_precision = config.latency.precision, "fp32"
            batch = config.latency.batch_size
            self.calibration = calibration_batches(
                ctx.data.train, batches=max(1, 64 // batch), batch_size=batch, seed=config.seed
            ) if self.precision == "int8" else None

    def accuracy(self, model: nn.Module, split: Split) -> float:
        """Accuracy on `split` at the precision the study scored this kind of candidate (fp16 / int8: the
        converted ONNX model in ONNX Runtime)."""
        if self.accuracy_precision == "fp32":
            return evaluate(model, split)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, self.ctx.data.input_shape, Path(tmp) / "model.onnx", dynamic_batch=True)
            path = convert_precision(path, Path(tmp) / "model.low.onnx", self.accuracy_precision, self.calibration)
            return onnx_accuracy(path, split, batch_size=64)

    def fine_tune(self, model: nn.Module, epochs: float) -> None:
        """More of the study's fine-tune (distilled from the base in a compression study)."""
        settings = dataclasses.replace(self.settings, epochs=epochs)
        train_model(model, self.ctx.data, settings, seed=self.seed, teacher=getattr(self.ctx.space, "base", None))

    def latency(self, model: nn.Module) -> LatencyStats:
        """Latency on the study's backend, at the precision the study timed."""
        return self.ctx.backend.measure(model, self.ctx.data.input_shape, self.precision,
                                        self.config.latency.batch_size,
                                        calibration=self.calibration if self.precision == "int8" else None)


def _accuracy(scorer: Scorer, model: nn.Module, trial: FrozenTrial, finetune_epochs: float | None,
              say: Callable[[str], None]) -> dict[str, Any]:
    search_accuracy = float(trial.user_attrs["accuracy"])
    measured = scorer.accuracy(model, scorer.val)
    tolerance = 1.0 / max(len(scorer.val), 1)
    accuracy: dict[str, Any] = {
        "search": search_accuracy, "validation_images": len(scorer.val), "tolerance": tolerance,
        "matches_search": abs(measured - search_accuracy) <= tolerance + 1e-12,
        "precision": scorer.accuracy_precision,
    }
    if finetune_epochs:
        say(f"fine-tuning trial #{trial.number} for {finetune_epochs:g} more epoch(s)")
        scorer.fine_tune(model, finetune_epochs)
        accuracy["before_fine_tune"] = measured
        measured = scorer.accuracy(model, scorer.val)
    test = scorer.ctx.data.test
    accuracy.update(validation=measured, test=scorer.accuracy(model, test), test_images=len(test),
                    fine_tune_epochs=finetune_epochs or 0)
    return accuracy


def _write_model(model: nn.Module, out: Path, config: StudyConfig, candidate: dict[str, Any],
                 scorer: Scorer) -> tuple[Path, dict[str, Any]]:
    model.eval()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS)
    (out / "candidate.json").write_text(json.dumps(candidate, indent=2))
    (out / "recipe.yaml").write_text(yaml.safe_dump({**config.dump(), "storage": None}, sort_keys=False))
    onnx_path = export_onnx(model, scorer.ctx.data.input_shape, out / "model.onnx", dynamic_batch=True)
    x, _ = next(scorer.val.batches(64))
    diff = onnx_difference(onnx_path, model, x)
    onnx: dict[str, Any] = {"file": "model.onnx", "opset": OPSET, "dynamic_batch": True, "checked_images": len(x),
                            "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE, "matches": diff <= ONNX_TOLERANCE}
    if scorer.precision != "fp32":
        name = f"model.{scorer.precision}.onnx"
        convert_precision(onnx_path, out / name, scorer.precision, scorer.calibration)
        onnx["at_precision"] = name
    return onnx_path, onnx


def export_trial(
    config: StudyConfig, study: optuna.Study, trial: FrozenTrial, out: Path, *, how: str,
    finetune_epochs: float | None = None, say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write model.pt, candidate.json, recipe.yaml, model.onnx (and the model at the study's precision),
    model.engine (TensorRT), card.json and card.md for `trial` into `out`, measuring everything again."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = build_context(config)
    candidate = trial.user_attrs["candidate"]
    model = ctx.space.build(candidate)
    with tempfile.TemporaryDirectory() as tmp:
        load_weights(study, trial, config.run_dir, model, Path(tmp))
    scorer = Scorer(config, ctx, candidate, config.seed + trial.number)
    accuracy = _accuracy(scorer, model, trial, finetune_epochs, say)
    onnx_path, onnx = _write_model(model, out, config, candidate, scorer)
    cost = measure_cost(model, ctx.data.input_shape)
    stats = scorer.latency(model)
    latency = {k: v for k, v in stats.as_dict().items() if k != "extra"}
    latency["search_median_ms"] = trial.values[1]
    trt = tensorrt_engine(onnx_path, out, ctx, scorer.precision, scorer.calibration, say)
    base = study.user_attrs.get("base")
    card = {
        "study": config.name, "trial": trial.number, "chosen_by": how,
        "description": getattr(ctx.space, "describe", lambda c: "")(candidate),
        "candidate": candidate, "input_shape": list(ctx.data.input_shape), "num_classes": ctx.data.num_classes,
        "dataset": ctx.data.name, "accuracy": accuracy, "latency": latency, "cost": cost.as_dict(),
        "onnx": onnx, "tensorrt": trt,
        "versus_base": {
            "base": {k: base.get(k) for k in ("accuracy", "latency_ms", "params", "flops", "macs")},
            **versus_base(base, cost, accuracy["validation"], stats.median_ms),
        } if base else None,
        "files": sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("card.")),
    }
    write_card(card, out)
    return card


def rebuild(out: str | Path) -> nn.Module:
    """The exported PyTorch model, rebuilt from an export directory (recipe.yaml, candidate.json, model.pt).
    The recipe's space builds it, so its data (for the shapes) and, in a compression study, its base checkpoint
    must be where the recipe says; no latency backend is opened."""
    out = Path(out)
    config = validate_config(yaml.safe_load((out / "recipe.yaml").read_text()), str(out / "recipe.yaml"))
    model = build_space(config, recipe_data(config)).build(json.loads((out / "candidate.json").read_text()))
    model.load_state_dict(torch.load(out / WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
