"""What a long fine-tune is asked for — epochs, learning rate, batch, distillation, device, starting weights — checked
as bad input, resolved against the run's recipe into the trainer's settings, and the part of it an output folder's
fine-tune must match to be continued."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from evaluators.train import TrainSettings, resolve_device
from search.errors import UsageError
from search.recipe.sections import MAX_BATCH, MAX_EPOCHS

STARTS = ("searched", "built")
SCHEDULE = "cosine"
WARMUP_EPOCHS = 1.0  # at most: the warm-up is the recipe's share of the steps, capped at one epoch


@dataclass(frozen=True)
class FineTunePlan:
    """A long fine-tune as asked for; None: the recipe's value. `start`: `searched` (the weights the search fine-tuned,
    where the trial kept them; else as built) or `built` (the network as its candidate builds it, prepared as the study
    prepares a candidate: a compressed one cut from the base and BatchNorm recalibrated)."""

    epochs: float
    lr: float | None = None
    batch_size: int | None = None
    kd_alpha: float | None = None
    device: str | None = None
    start: str = "searched"

    def check(self) -> None:
        """Refuse values no fine-tune can run with, naming the option and what it takes."""
        if not _finite(self.epochs) or not 0 < self.epochs <= MAX_EPOCHS:
            raise UsageError(f"--epochs: expected a finite number of epochs above 0 and at most {MAX_EPOCHS}, "
                             f"got {self.epochs}")
        if self.lr is not None and (not _finite(self.lr) or not 0 < self.lr <= 10):
            raise UsageError(f"--lr: expected a finite learning rate above 0 and at most 10, got {self.lr}")
        if self.batch_size is not None and not 1 <= self.batch_size <= MAX_BATCH:
            raise UsageError(f"--batch-size: expected 1 to {MAX_BATCH} images, got {self.batch_size}")
        if self.kd_alpha is not None and (not _finite(self.kd_alpha) or not 0 <= self.kd_alpha <= 1):
            raise UsageError(f"--kd-alpha: expected a weight from 0 to 1, got {self.kd_alpha}")
        if self.start not in STARTS:
            raise UsageError(f"--start: expected one of {', '.join(STARTS)}, got {self.start!r}")
        if self.device is not None:
            self.resolved_device()

    def resolved_device(self, recipe_device: str = "auto") -> str:
        """`--device`, else the recipe's `train.device`, resolved to cpu or cuda (a UsageError where it is absent)."""
        try:
            return resolve_device(self.device or recipe_device)
        except ValueError as exc:
            raise UsageError(f"--device: {exc}") from None

    def settings(self, recipe: TrainSettings, recipe_device: str, distilled: bool) -> TrainSettings:
        """The recipe's training settings with this plan's: its epochs on every training image, the cosine schedule
        (warm-up: the recipe's share of the steps, at most one epoch), the learning rate, batch and distillation
        weight asked for, on the device asked for. Without a teacher the distillation weight is 0; asking for one
        there is a UsageError."""
        if not distilled and self.kd_alpha:
            raise UsageError(f"--kd-alpha {self.kd_alpha:g}: this run has no base network to distil from (a blocks "
                             "study); leave --kd-alpha out")
        return dataclasses.replace(
            recipe, epochs=self.epochs, schedule=SCHEDULE, warmup=min(recipe.warmup, WARMUP_EPOCHS / self.epochs),
            lr=recipe.lr if self.lr is None else self.lr,
            batch_size=recipe.batch_size if self.batch_size is None else self.batch_size,
            kd_alpha=(recipe.kd_alpha if self.kd_alpha is None else self.kd_alpha) if distilled else 0.0,
            max_train_samples=None, device=self.resolved_device(recipe_device),
        )

    def identity(self, recipe: TrainSettings) -> dict[str, Any]:
        """What a fine-tune in an output folder must have been asked for to be continued: everything that changes
        its steps (the device does not: a fine-tune begun on the CPU may go on on a GPU)."""
        s = self.settings(recipe, "cpu", distilled=True)
        return {"epochs": self.epochs, "start": self.start, "schedule": s.schedule, "warmup": s.warmup, "lr": s.lr,
                "batch_size": s.batch_size, "kd_alpha": s.kd_alpha, "kd_temperature": s.kd_temperature,
                "momentum": s.momentum, "weight_decay": s.weight_decay, "label_smoothing": s.label_smoothing}


def _finite(value: float) -> bool:
    """Whether `value` is a number and neither NaN nor infinite."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def epoch_marks(epochs: float) -> list[float]:
    """Where a fine-tune of `epochs` is checkpointed and scored: after each whole epoch, and at its end."""
    marks = [float(e) for e in range(1, int(math.floor(epochs)) + 1)]
    return marks if marks and marks[-1] == epochs else [*marks, float(epochs)]
