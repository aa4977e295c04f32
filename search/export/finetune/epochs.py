"""A long fine-tune epoch by epoch: trained in parts (a bar on a terminal moves with them), scored after each epoch on
the validation and test images, checkpointed after each (a kill loses at most the epoch under way), a line per epoch.
`Interrupted`: what Ctrl-C becomes once a checkpoint is kept."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from evaluators.latency.base import cpu_name
from evaluators.splits import Split
from evaluators.train import FineTune, evaluate, placed
from search.export.finetune.plan import epoch_marks
from search.export.finetune.store import CHECKPOINT, Saved, save
from search.study.interrupt import raise_if_interrupted
from search.trial.locks import MachineLock
from search.trial.steps import StepProgress

PARTS = 20  # pieces an epoch is trained in, so the bar moves within it


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a fine-tune: it stopped cleanly, its last checkpoint kept for the same command to continue."""

    def __init__(self, out: Path, epochs_done: float, epochs: float) -> None:
        super().__init__(f"interrupted; the checkpoint after epoch {epochs_done:g} of {epochs:g} is kept in "
                         f"{out / CHECKPOINT}: the same command continues from it")


def device_name(device: str) -> str:
    """The CPU or GPU a fine-tune runs on, by name."""
    return f"cuda: {torch.cuda.get_device_name(device)}" if torch.device(device).type == "cuda" else f"cpu: {cpu_name()}"


def scores(model: nn.Module, device: str, val: Split, test: Split | None) -> tuple[float, float | None]:
    """fp32 accuracy on the validation and (where there is one) test images, scored on `device`."""
    with placed(device, model):
        return evaluate(model, val), None if test is None else evaluate(model, test)


def history_row(tune: FineTune, epoch: float, session: int, val: float, test: float | None) -> dict[str, object]:
    """One scored point of a fine-tune's history (`store.COLUMNS`)."""
    return {"epoch": epoch, "step": tune.step, "loss": None if tune.step == 0 else round(tune.loss, 6),
            "validation": val, "test": test, "seconds": round(tune.seconds, 2), "session": session,
            "device": device_name(tune.settings.device)}


def _bar(label: str, progress: bool) -> StepProgress | None:
    """A progress bar where output goes to a terminal and `progress` asks for one (in a log, the line per epoch says
    how far the fine-tune is)."""
    bar = StepProgress(f"fine-tuning {label}", "epochs") if progress else None
    return bar if bar is not None and bar.console.is_terminal else None


def train_epochs(
    tune: FineTune, saved: Saved, out: Path, label: str, val: Split, test: Split | None,
    say: Callable[[str], None], progress: bool,
) -> None:
    """Train `tune` from where `saved` stands to the end of its plan, epoch by epoch: each epoch scored, appended to
    the history and checkpointed with the trainer's whole state. Fine-tune steps share the machine with other
    fine-tunes, never with a latency measurement (the machine lock)."""
    epochs, device = tune.settings.epochs, tune.settings.device
    saved.sessions += 1
    lock = MachineLock(say=say)
    done = saved.epochs_done
    with _bar(label, progress) or nullcontext() as step:
        for mark in (m for m in epoch_marks(epochs) if m > done):
            parts = max(1, min(PARTS, tune.steps_at(mark) - tune.step))
            for k in range(1, parts + 1):
                reached = done + (mark - done) * k / parts
                with lock.training():
                    tune.run_to(reached)
                raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt a garbage-collection callback swallowed
                if step is not None:
                    step(round(reached, 3), epochs)
            v, t = scores(tune.model, device, val, test)
            saved.history.append(history_row(tune, mark, saved.sessions, v, t))
            saved.state = tune.state_dict()
            save(out, saved)
            say(f"epoch {mark:g}/{epochs:g}: loss {tune.loss:.4f}, validation {v:.4f}"
                + ("" if t is None else f", test {t:.4f}") + f" ({tune.seconds:.1f} s of training)")
            done = mark
