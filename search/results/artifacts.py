"""Trial artifacts: the weights and ONNX file of the trials on the front, in the run's Optuna artifact store.

A trial uploads `model.pt` (its state_dict) and `model.onnx` (the export its latency was timed from) only
when it lands on the current front (the model is still in memory then); `PruneArtifacts`, called after each trial, removes the
files of trials that have left the front, so `runs/NAME/artifacts/` holds about one front's worth.
The artifact records stay on the trials (Optuna cannot change a finished trial); a dropped file
is simply absent from the store.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from evaluators.onnx_model import ExportedModel
from search.results.front import FinishedTrial, dominated

ARTIFACTS_DIR = "artifacts"
WEIGHTS = "model.pt"
ATTR_PREFIX = "artifacts:"  # where `upload_artifact` records an artifact on its trial (a system attr)


def artifact_store(run_dir: str | Path) -> FileSystemArtifactStore:
    """The run directory's artifact store (`runs/NAME/artifacts/`), created if needed."""
    path = Path(run_dir) / ARTIFACTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(path)


def keep_if_on_front(
    trial: optuna.Trial, exported: ExportedModel, accuracy: float, latency_ms: float,
    store: FileSystemArtifactStore,
) -> bool:
    """Upload the model's weights and its ONNX export as artifacts of the running trial when it is not dominated
    by a completed trial. Returns whether it did."""
    if dominated(trial.study, accuracy, latency_ms):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / WEIGHTS
        torch.save({k: v.detach().cpu() for k, v in exported.module.state_dict().items()}, weights)
        for path in (weights, exported.onnx):  # stored under their file names, model.pt and model.onnx
            upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="application/octet-stream",
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


def prune_artifacts(finished: FinishedTrial, store: FileSystemArtifactStore) -> int:
    """Remove the stored files of finished trials that are not on the front; returns how many went."""
    keep = {t.number for t in finished.front}
    removed = 0
    for t in finished.trials:
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
    """After-trial listener: drop the artifacts of trials that left the front."""

    def __init__(self, store: FileSystemArtifactStore) -> None:
        self.store = store

    def __call__(self, finished: FinishedTrial) -> None:
        prune_artifacts(finished, self.store)
