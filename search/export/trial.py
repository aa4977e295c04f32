"""Export a chosen trial: its weights, ONNX file, a TensorRT engine where one can be built, and a model card.

Everything on the card is measured again at export, the way the study measured it: accuracy on the
validation split (which must match the trial's: the same weights on the same images) and on the
held-out test split, latency on the study's backend at the study's (or a compressed candidate's)
precision, FLOPs and parameters; the ONNX file is checked against PyTorch.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import torch
import torch.nn as nn
import yaml
from optuna.trial import FrozenTrial

from evaluators.cost import measure_cost
from evaluators.latency import AVAILABILITY, BACKENDS, BackendUnavailable, get_backend
from evaluators.onnx_model import ExportedModel
from evaluators.splits import Split
from evaluators.to_onnx import OPSET
from search.errors import UsageError
from search.export.card import write_card
from search.recipe.config import StudyConfig, validate_config
from search.results.artifacts import WEIGHTS, artifact_store, fetch, trial_artifacts
from search.results.front import front_trials
from search.results.record import TrialRecord
from search.trial.build import build_context, build_space
from search.trial.checkpoints import root_number
from search.trial.context import StudyContext, recipe_data
from search.trial.scoring import Scoring, scoring_for

ONNX_TOLERANCE = 1e-4


def load_weights(study: optuna.Study, trial: FrozenTrial, run_dir: Path, model: nn.Module, tmp: Path) -> None:
    """Load the trial's stored state_dict into `model`; a clear error when it has none."""
    path = tmp / WEIGHTS
    if not fetch(trial, WEIGHTS, artifact_store(run_dir), path):
        kept = [t.number for t in front_trials(study) if WEIGHTS in trial_artifacts(t)]
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


def _search_match(scoring: Scoring, record: TrialRecord, measured: float, images: int) -> dict[str, Any]:
    tolerance = 1.0 / max(images, 1)
    return {"search": record.accuracy, "validation_images": images, "tolerance": tolerance,
            "matches_search": abs(measured - float(record.accuracy)) <= tolerance + 1e-12,
            "precision": scoring.accuracy_precision(record.candidate)}


def _onnx_files(exported: ExportedModel, out: Path, scoring: Scoring, candidate: dict[str, Any],
                x: torch.Tensor) -> dict[str, Any]:
    """Copy the export (and the model at its timed precision) into `out`, checked against PyTorch on `x`."""
    shutil.copyfile(exported.onnx, out / "model.onnx")
    diff = onnx_difference(out / "model.onnx", exported.module, x)
    onnx: dict[str, Any] = {"file": "model.onnx", "opset": OPSET, "dynamic_batch": True, "checked_images": len(x),
                            "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE, "matches": diff <= ONNX_TOLERANCE}
    precision = scoring.precision(candidate)
    if precision != "fp32":
        name = f"model.{precision}.onnx"
        shutil.copyfile(exported.at(precision, scoring.calibration()), out / name)
        onnx["at_precision"] = name
    return onnx


def _top_rung(scoring: Scoring, model: nn.Module, candidate: dict[str, Any], seed: int, val: Split,
              folder: Path) -> tuple[ExportedModel, float]:
    """The whole fine-tune of a candidate the search stopped below the top rung, from the model as built: the one a
    promotion to the top would have continued (the same plan and seed); its export and validation accuracy."""
    torch.manual_seed(seed)
    scoring.prepare(model, seed)
    scoring.fine_tune(model, seed, candidate=candidate).run_to(scoring.config.train.epochs)
    exported = ExportedModel(model, scoring.data.input_shape, folder)
    return exported, scoring.accuracy(model, exported, candidate, val)


def export_trial(
    config: StudyConfig, study: optuna.Study, trial: FrozenTrial, out: Path, *, how: str,
    finetune_epochs: float | None = None, say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write model.pt, candidate.json, recipe.yaml, model.onnx (and the model at the study's precision),
    model.engine (TensorRT), card.json and card.md for `trial` into `out`, measuring everything again with the
    study's own scoring. A folder `out` this call created is removed again if the export fails (a trial without
    weights, an engine that cannot be built), so no empty or half-written folder is left."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file, not a folder; name a folder to write the export into")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create it ({exc.strerror or exc}); name a folder you can write") from None
    try:
        return _write_export(config, study, trial, out, how=how, finetune_epochs=finetune_epochs, say=say)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_export(
    config: StudyConfig, study: optuna.Study, trial: FrozenTrial, out: Path, *, how: str,
    finetune_epochs: float | None, say: Callable[[str], None],
) -> dict[str, Any]:
    """The files of `export_trial`, written into the existing folder `out`."""
    ctx = build_context(config)
    scoring = scoring_for(ctx)
    scoring.attach(study)
    record = TrialRecord.of(trial)
    candidate = record.candidate
    seed = config.seed + root_number(trial)
    torch.manual_seed(seed)  # the initial weights the trial's network was built with
    model = ctx.space.build(candidate)
    val, test = scoring.validation(), ctx.data.test
    with tempfile.TemporaryDirectory() as tmp:
        if record.at_top:
            load_weights(study, trial, config.run_dir, model, Path(tmp))
            exported = ExportedModel(model, ctx.data.input_shape, Path(tmp) / "search")
            measured = scoring.accuracy(model, exported, candidate, val)
            accuracy = _search_match(scoring, record, measured, len(val))
        else:
            epochs = record.rungs[-1]["epochs"] if record.rungs else 0
            say(f"trial #{trial.number} stopped at rung {record.rung} ({epochs:g} epochs) of the search; fine-tuning "
                f"it to the top rung ({config.train.epochs:g} epochs) first, as a promotion would have")
            exported, measured = _top_rung(scoring, model, candidate, seed, val, Path(tmp) / "top")
            accuracy = {"search": record.accuracy, "search_rung": record.rung, "search_epochs": epochs,
                        "validation_images": len(val), "matches_search": None,
                        "precision": scoring.accuracy_precision(candidate)}
        if finetune_epochs:
            say(f"fine-tuning trial #{trial.number} for {finetune_epochs:g} more epoch(s)")
            scoring.fine_tune(model, seed, finetune_epochs, candidate).run_to(finetune_epochs)
            exported = ExportedModel(model, ctx.data.input_shape, Path(tmp) / "fine-tuned")
            accuracy["before_fine_tune"], measured = measured, scoring.accuracy(model, exported, candidate, val)
        accuracy.update(validation=measured, test=scoring.accuracy(model, exported, candidate, test),
                        test_images=len(test), fine_tune_epochs=finetune_epochs or 0)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS)
        (out / "candidate.json").write_text(json.dumps(candidate, indent=2))
        (out / "recipe.yaml").write_text(yaml.safe_dump({**config.dump(), "storage": None}, sort_keys=False))
        onnx = _onnx_files(exported, out, scoring, candidate, next(val.batches(64))[0])
        stats = scoring.latency(exported, candidate)
    cost = measure_cost(model, ctx.data.input_shape)
    latency = {k: v for k, v in stats.as_dict().items() if k != "extra"}
    latency["search_median_ms"] = trial.values[1]
    precision = scoring.precision(candidate)
    trt = tensorrt_engine(out / "model.onnx", out, ctx, precision, scoring.calibration(), say)
    versus = scoring.versus_base(cost, accuracy["validation"], stats)
    base = study.user_attrs.get("base") or {}
    card = {
        "study": config.name, "trial": trial.number, "chosen_by": how, "description": ctx.space.describe(candidate),
        "candidate": candidate, "input_shape": list(ctx.data.input_shape), "num_classes": ctx.data.num_classes,
        "dataset": ctx.data.name, "accuracy": accuracy, "latency": latency, "cost": cost.as_dict(),
        "onnx": onnx, "tensorrt": trt,
        "versus_base": None if versus is None else {
            "base": {k: base.get(k) for k in ("accuracy", "latency_ms", "params", "flops", "macs")}, **versus,
        },
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
