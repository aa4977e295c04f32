"""Checks a study makes as it starts, once its data and latency engine are known and before anything is trained: a
recipe that validates can still ask for a training that rounds to no step of this data, or for a precision this engine
cannot time. Each is a UsageError naming the recipe key, so the start is taken back instead of failing every trial
(or a base network trained for nothing)."""

from __future__ import annotations

import math

from evaluators.latency import LatencyBackend
from evaluators.splits import DataBundle
from search.errors import UsageError
from search.recipe.config import StudyConfig
from search.trial.scoring import SCORINGS


def training_lengths(config: StudyConfig) -> list[tuple[str, float, int | None]]:
    """Every training the recipe asks for: (recipe key, epochs, images per epoch cap), the zero-epoch rung left out."""
    out: list[tuple[str, float, int | None]] = [("train.epochs", config.train.epochs, config.train.max_train_samples)]
    fidelity = config.search.fidelity
    if fidelity is not None:
        out += [(f"search.fidelity.rungs.{i}", epochs, config.train.max_train_samples)
                for i, epochs in enumerate(fidelity.rungs) if epochs > 0]
    base = getattr(config.space, "base", None)
    if base is not None and getattr(base, "checkpoint", "") is None:
        out.append(("space.base.epochs", base.epochs, None))
    return out


def check_training_lengths(config: StudyConfig, data: DataBundle) -> None:
    """Refuse a training that rounds to no optimizer step of this data (under half a step): the network would be
    scored untrained, at chance, as if it were a result."""
    for key, epochs, cap in training_lengths(config):
        images = len(data.train) if cap is None else min(cap, len(data.train))
        steps_per_epoch = math.ceil(images / config.train.batch_size)
        if epochs * steps_per_epoch < 0.5:
            raise UsageError(
                f"{key}: {epochs:g} epochs of {images} training images in batches of {config.train.batch_size} round "
                f"to no training step, so nothing would be trained; one step is {1 / steps_per_epoch:.3g} epochs"
            )


def check_engine(config: StudyConfig, backend: LatencyBackend) -> None:
    """Refuse what the study's latency engine cannot time (a precision the space searches, say) before the space is
    built, which for a compression study trains its base."""
    SCORINGS[config.space.type].check_engine(config, backend)
