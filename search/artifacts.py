"""Trial artifacts: the weights and ONNX file of the trials on the front, in the run's Optuna artifact store.

A trial uploads `model.pt` (its state_dict) and `model.onnx` only when it lands on the current
front (the model is still in memory then); `PruneArtifacts`, called after each trial, removes the
files of trials that have left the front, so `runs/NAME/artifacts/` holds about one front's worth.
The artifact records stay on the trials (Optuna cannot change a finished trial); a dropped file
is simply absent from the store.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import optuna
import torch
import torch.nn as nn
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from evaluators.onnx_export import export_onnx
from search.constraints import is_feasible
from search.pareto import pareto_mask

ARTIFACTS_DIR = "artifacts"
WEIGHTS = "model.pt"
ONNX = "model.onnx"
ATTR_PREFIX = "artifacts:"  # where `upload_artifact` records an artifact on its trial (a system attr)


def artifact_store(run_dir: str | Path) -> FileSystemArtifactStore:
    """The run directory's artifact store (`runs/NAME/artifacts/`), created if needed."""
    path = Path(run_dir) / ARTIFACTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(path)


def front_numbers(study: optuna.Study) -> set[int]:
    """Numbers of the completed, feasible trials on the accuracy / latency front."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_feasible(t.user_attrs)]
    if not done:
        return set()
    mask = pareto_mask(np.array([t.values[0] for t in done]), np.array([t.values[1] for t in done]))
    return {t.number for t, keep in zip(done, mask) if keep}


def dominated(study: optuna.Study, accuracy: float, latency_ms: float) -> bool:
    """Whether a completed, feasible trial is at least as good on both objectives and better on one."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if not is_feasible(t.user_attrs):
            continue
        acc, lat = t.values
        if acc >= accuracy and lat <= latency_ms and (acc > accuracy or lat < latency_ms):
            return True
    return False


def keep_if_on_front(
    trial: optuna.Trial, model: nn.Module, input_shape: tuple[int, ...], accuracy: float, latency_ms: float,
    store: FileSystemArtifactStore,
) -> bool:
    """Upload the model's weights and ONNX file as artifacts of the running trial when it is not dominated
    by a completed trial. Returns whether it did."""
    if dominated(trial.study, accuracy, latency_ms):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / WEIGHTS
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        onnx = export_onnx(model, input_shape, Path(tmp) / ONNX, dynamic_batch=True)
        for path in (weights, onnx):
            upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="application/octet-stream"
            )
    return True


def trial_artifacts(trial: FrozenTrial) -> dict[str, str]:
    """`{filename: artifact_id}` recorded on a trial (the files may have been dropped since)."""
    out = {}
    for key, value in trial.system_attrs.items():
        meta = json.loads(value) if key.startswith(ATTR_PREFIX) and isinstance(value, str) else None
        if meta:
            out[meta["filename"]] = meta["artifact_id"]
    return out


def fetch(trial: FrozenTrial, filename: str, store: FileSystemArtifactStore, dest: Path) -> bool:
    """Download one artifact of a trial to `dest`; False when the trial has none or it was dropped."""
    artifact_id = trial_artifacts(trial).get(filename)
    if artifact_id is None:
        return False
    try:
        download_artifact(artifact_store=store, file_path=str(dest), artifact_id=artifact_id)
    except ArtifactNotFound:
        return False
    return True


def prune_artifacts(study: optuna.Study, store: FileSystemArtifactStore) -> int:
    """Remove the stored files of finished trials that are not on the front; returns how many went."""
    keep = front_numbers(study)
    removed = 0
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished() or t.number in keep:
            continue
        for artifact_id in trial_artifacts(t).values():
            try:
                store.remove(artifact_id)
                removed += 1
            except ArtifactNotFound:
                pass
    return removed


class PruneArtifacts:
    """Optuna callback: after each trial, drop the artifacts of trials that left the front."""

    def __init__(self, store: FileSystemArtifactStore) -> None:
        self.store = store

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        prune_artifacts(study, self.store)
