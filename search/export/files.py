"""What a picked network ships as, written the same way by `export` and `finetune`: model.pt, candidate.json,
recipe.yaml, model.onnx checked against PyTorch (and the model at its timed precision), a TensorRT engine where one
can be built — and the card's measured part: latency on the study's backend (a compressed network's speed-up timed
interleaved with the base), FLOPs and parameters, the comparison with the base."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
from evaluators.to_onnx import OPSET
from search.errors import UsageError
from search.recipe.config import StudyConfig
from search.results.artifacts import WEIGHTS, artifact_store, fetch, trial_artifacts
from search.results.front import front_trials
from search.trial.context import StudyContext
from search.trial.locks import MachineLock
from search.trial.scoring import Scoring
from search.trial.scoring.base_network import BASE_FILE

ONNX_TOLERANCE = 1e-4


@contextmanager
def output_folder(out: Path, keep: Callable[[], bool] = lambda: False) -> Iterator[Path]:
    """`out`, created where missing (a file there, or a folder that cannot be made, is a UsageError). A folder this
    call created is removed again if the block fails and `keep()` says nothing in it is worth keeping, so no empty or
    half-written folder is left."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file, not a folder; name a folder to write into")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create it ({exc.strerror or exc}); name a folder you can write") from None
    try:
        yield out
    except BaseException:
        if created and not keep():
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_base_files(config: StudyConfig) -> None:
    """Refuse a compression run whose base weights are not where its frozen recipe says: a checkpoint that moved, or
    the run's own trained `base.pt` gone (which would otherwise be trained again, as another network)."""
    if config.space.type != "compress":
        return
    spec = config.space.base
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise UsageError(
                f"space.base.checkpoint: {spec.checkpoint} (frozen in {config.run_dir / 'config.yaml'}) is not there "
                f"from {Path.cwd()}; run from the folder the study ran in, or put the base checkpoint back there"
            )
    elif not (config.run_dir / BASE_FILE).is_file():
        raise UsageError(
            f"{config.run_dir / BASE_FILE}: the base network this run trained and compressed is missing; put it back "
            "(another one trained now would be another network)"
        )


def load_weights(study: optuna.Study, trial: FrozenTrial, run_dir: Path, model: nn.Module, tmp: Path) -> None:
    """Load the trial's stored state_dict into `model`; a clear error when it has none."""
    if not stored_weights(trial, run_dir, tmp):
        kept = [t.number for t in front_trials(study) if WEIGHTS in trial_artifacts(t)]
        raise UsageError(
            f"trial #{trial.number} has no stored weights: only trials on the front keep them, and they are "
            f"dropped when a trial leaves it. Trials with weights: {', '.join(f'#{n}' for n in kept) or 'none'}"
        )
    model.load_state_dict(torch.load(tmp / WEIGHTS, map_location="cpu", weights_only=True))


def stored_weights(trial: FrozenTrial, run_dir: Path, tmp: Path) -> bool:
    """Fetch the trial's stored state_dict to `tmp/model.pt`; whether it had one."""
    return fetch(trial, WEIGHTS, artifact_store(run_dir), tmp / WEIGHTS)


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


def ship(
    ctx: StudyContext, scoring: Scoring, study: optuna.Study, exported: ExportedModel, candidate: dict[str, Any] | None,
    out: Path, accuracy: dict[str, Any], say: Callable[[str], None],
) -> dict[str, Any]:
    """Write the network of `exported` into `out` — model.pt, candidate.json (a candidate of the run's space only),
    recipe.yaml, model.onnx checked against PyTorch on validation images, the model at its timed precision,
    model.engine — and return the card's part that does not depend on how it was picked: data, `accuracy` (its
    `validation` compared with the base), latency (timed alone on the machine), cost, ONNX, TensorRT, versus base."""
    model, config, chosen = exported.module, ctx.config, candidate or {}
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS)
    if candidate is not None:
        (out / "candidate.json").write_text(json.dumps(candidate, indent=2))
    (out / "recipe.yaml").write_text(yaml.safe_dump({**config.dump(), "storage": None}, sort_keys=False))
    onnx = _onnx_files(exported, out, scoring, chosen, next(scoring.validation().batches(64))[0])
    with MachineLock(say=say).measuring():
        stats = scoring.latency(exported, chosen)
    cost = measure_cost(model, ctx.data.input_shape)
    precision = scoring.precision(chosen)
    trt = tensorrt_engine(out / "model.onnx", out, ctx, precision, scoring.calibration(), say)
    versus = scoring.versus_base(cost, accuracy["validation"], stats)
    base = study.user_attrs.get("base") or {}
    return {
        "input_shape": list(ctx.data.input_shape), "num_classes": ctx.data.num_classes, "dataset": ctx.data.name,
        "accuracy": accuracy, "latency": {k: v for k, v in stats.as_dict().items() if k != "extra"},
        "cost": cost.as_dict(), "onnx": onnx, "tensorrt": trt,
        "versus_base": None if versus is None else {
            "base": {k: base.get(k) for k in ("accuracy", "latency_ms", "params", "flops", "macs")}, **versus,
        },
    }


def folder_files(out: Path) -> list[str]:
    """The files of an output folder a card lists (all but the card itself)."""
    return sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("card."))
