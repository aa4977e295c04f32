"""Rung checkpoints of a multi-fidelity study: where a candidate's fine-tune stood after its last finished rung.

A candidate's trial writes `runs/NAME/checkpoints/trial-N.pt` (the whole `FineTune` state) after each rung below
the top and removes it when the trial ends. A worker killed mid-rung leaves the file behind; the trial Optuna
queues again in its place (same parameters, same record) finds it by the original trial's number and goes on
from that rung. Its fine-tune is then exactly the one an uninterrupted trial would have run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
import torch

CHECKPOINTS = "checkpoints"


def root_number(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The number of the trial a (retried) trial stands for: its own, or the first one of its retry chain."""
    if isinstance(trial, optuna.trial.FrozenTrial):
        attrs = trial.system_attrs
    else:
        attrs = trial.study._storage.get_trial(trial._trial_id).system_attrs
    return int(attrs.get("failed_trial", trial.number))


def _path(run_dir: Path, root: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"trial-{root}.pt"


def save(run_dir: Path, root: int, rung: int, state: dict[str, Any]) -> None:
    """Write the state after `rung` atomically (a reader never sees half a file)."""
    path = _path(run_dir, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"rung": rung, "state": state}, tmp)
    os.replace(tmp, path)


def load(run_dir: Path, root: int) -> tuple[int, dict[str, Any]] | None:
    """(rung, state) of the last finished rung, or None when there is no checkpoint."""
    path = _path(run_dir, root)
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return int(saved["rung"]), saved["state"]


def drop(run_dir: Path, root: int) -> None:
    """Remove the checkpoint of a trial that has ended."""
    _path(run_dir, root).unlink(missing_ok=True)
