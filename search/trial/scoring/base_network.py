"""The base network of a compression study: built by name, trained once (cached in the run directory) or
loaded from a checkpoint, and measured once (accuracy, cost, latency) into the study's `base` attribute.
The compression scoring prepares it for the space and compares every candidate with it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import torch.nn as nn

from evaluators.cost import measure_cost
from evaluators.latency import LatencyBackend
from evaluators.splits import DataBundle
from evaluators.train import FineTune, TrainSettings, evaluate
from search.errors import UsageError
from search.recipe.config import StudyConfig
from search.trial.locks import locked
from search.trial.steps import StepProgress
from spaces.compress import CompressError, build_model, check_exclusions, check_prunable, load_checkpoint

BASE_FILE = "base.pt"
TAYLOR_IMAGES = 256  # the labelled batch Taylor importance takes its gradients on


@dataclass
class PreparedBase:
    """A trained base network, where its weights are, and a labelled batch for gradient-based importance."""

    model: nn.Module
    checkpoint: Path
    calibration: tuple[torch.Tensor, torch.Tensor]


def _provenance(config: StudyConfig, data: DataBundle) -> dict[str, Any]:
    spec = config.space.base
    return {"model": spec.model, "kwargs": spec.kwargs, "dataset": data.name, "image_size": data.image_size,
            "epochs": spec.epochs, "lr": spec.lr, "seed": config.seed}


def base_settings(config: StudyConfig) -> TrainSettings:
    """The base's training: the recipe's `train:` settings with the base's epochs and learning rate, on every
    training image (`max_train_samples` limits candidates' fine-tunes only), no teacher."""
    fields = config.train.model_dump(
        exclude={"threads", "bn_batches", "kd_alpha", "kd_temperature", "max_train_samples", "device"}
    )
    return dataclasses.replace(
        TrainSettings(**fields), epochs=config.space.base.epochs, lr=config.space.base.lr,
        device=config.train.resolved_device(),
    )


def _read_cached(path: Path) -> dict[str, Any]:
    """A network the study trained and cached at `path`; a damaged file is a UsageError that says to delete it."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch.load raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise UsageError(f"{path}: damaged (not a network this study trained); delete it, and the next run trains "
                         "it again")
    return saved


def cached_training(
    path: Path, wanted: dict[str, Any], model: nn.Module, train: Callable[[nn.Module], object]
) -> bool:
    """Load `path` into `model` where it holds weights trained as `wanted` says; else `train(model)` and write them
    there (atomically) first. Worker processes of one study train each network once. Returns whether it trained."""
    with locked(path.parent / "base.lock"):
        if path.is_file():
            saved = _read_cached(path)
            if saved.get("provenance") != wanted:
                raise UsageError(
                    f"{path} holds a network trained as {saved.get('provenance')}, but the recipe asks for {wanted}; "
                    "delete it or start a new study (--set name=...)"
                )
            load_checkpoint(model, path)
            return False
        train(model)
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": model.state_dict(), "provenance": wanted}, tmp)
        os.replace(tmp, path)
    return True


def _train_or_load(config: StudyConfig, data: DataBundle, model: nn.Module) -> Path:
    """Load `runs/NAME/base.pt`, or train the base and write it there first."""
    path = config.run_dir / BASE_FILE
    cached_training(path, _provenance(config, data), model, lambda m: train_with_progress(m, data, config))
    return path


def train_with_progress(model: nn.Module, data: DataBundle, config: StudyConfig) -> None:
    """Train the base as `base_settings` says, in twentieths of its epochs, saying how far it is (a bar on a
    terminal, a line every half minute in a log): on a CPU this can take hours. A fine-tune cut into parts takes
    the same steps as one run straight through."""
    settings = base_settings(config)
    tune = FineTune(model, data, settings, seed=config.seed)
    epochs = settings.epochs
    with StepProgress(f"training the base {config.space.base.model}", "epochs") as step:
        for part in range(1, 21):
            loss = tune.run_to(epochs * part / 20)
            step(round(epochs * part / 20, 2), epochs, f"loss {loss:.3f}")


def calibration_batch(
    data: DataBundle, seed: int, images: int = TAYLOR_IMAGES
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, normalized, labelled batch of training images (Taylor importance needs gradients)."""
    return next(data.train.subset(images, seed).batches(images))


def prepare_base(config: StudyConfig, data: DataBundle) -> PreparedBase:
    """Build the recipe's base network for `data`, with its checkpoint or trained in the study (cached)."""
    spec = config.space.base
    torch.manual_seed(config.seed)  # the base's initial weights, so the same recipe trains the same base
    try:
        model = build_model(
            spec.model, in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size,
            kwargs=spec.kwargs,
        )
        example = torch.zeros(1, *data.input_shape)
        check_exclusions(model, example, config.space.exclude)
        if config.space.keep[0] < 1:  # refuse a network that cannot be pruned before training it
            check_prunable(model, example, config.space.exclude)
        if spec.checkpoint:
            path = Path(spec.checkpoint)
            try:
                load_checkpoint(model, path)
            except CompressError as exc:
                raise CompressError(f"space.base.checkpoint: {exc}") from None
        else:
            path = _train_or_load(config, data, model)
    except CompressError as exc:
        message = str(exc)
        raise UsageError(message if message.startswith("space.") else f"space.base: {message}") from None
    return PreparedBase(model.eval(), path, calibration_batch(data, config.seed))


def measure_base(
    config: StudyConfig, data: DataBundle, backend: LatencyBackend, base: nn.Module, spec: dict[str, Any]
) -> dict[str, Any]:
    """The base's accuracy (validation, as candidates are scored), MACs, FLOPs, params and fp32 latency."""
    val = data.val.subset(config.train.max_eval_samples, config.seed)
    cost = measure_cost(base, data.input_shape)
    stats = backend.measure(base, data.input_shape, "fp32", config.latency.batch_size)
    return {
        **spec, "accuracy": evaluate(base, val), "latency_ms": stats.median_ms, **cost.as_dict(),
        "latency": {k: v for k, v in stats.as_dict().items() if k != "extra"},
    }


def recorded_base(
    study: optuna.Study, config: StudyConfig, data: DataBundle, backend: LatencyBackend, base: nn.Module,
    spec: dict[str, Any],
) -> dict[str, Any]:
    """The study's `base` attribute, measured and stored by the first trial that needs it."""
    record = study.user_attrs.get("base")
    if record is None:
        record = measure_base(config, data, backend, base, spec)
        study.set_user_attr("base", record)
    elif record.get("sha256") != spec.get("sha256"):
        raise UsageError(
            f"study {study.study_name!r} compresses base weights {str(record.get('sha256'))[:12]}…, not these "
            f"({spec.get('checkpoint')}); start a new study (--set name=...)"
        )
    return record
