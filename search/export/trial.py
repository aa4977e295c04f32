"""Export a chosen trial: its weights, ONNX file, a TensorRT engine where one can be built, and a model card.

Everything on the card is measured again at export, the way the study measured it: accuracy on the
validation split (which must match the trial's: the same weights on the same images) and on the
held-out test split, latency on the study's backend at the study's (or a compressed candidate's)
precision, FLOPs and parameters; the ONNX file is checked against PyTorch.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import torch.nn as nn
import yaml
from optuna.trial import FrozenTrial

from evaluators.onnx_model import ExportedModel
from evaluators.splits import Split
from search.export.card import write_card
from search.export.files import check_base_files, folder_files, load_weights, output_folder, ship
from search.recipe.config import StudyConfig, validate_config
from search.results.artifacts import WEIGHTS
from search.results.record import TrialRecord
from search.trial.build import build_context, build_space
from search.trial.checkpoints import root_number
from search.trial.context import recipe_data
from search.trial.scoring import Scoring, scoring_for


def _search_match(scoring: Scoring, record: TrialRecord, measured: float, images: int) -> dict[str, Any]:
    tolerance = 1.0 / max(images, 1)
    return {"search": record.accuracy, "validation_images": images, "tolerance": tolerance,
            "matches_search": abs(measured - float(record.accuracy)) <= tolerance + 1e-12,
            "precision": scoring.accuracy_precision(record.candidate)}


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
    check_base_files(config)
    with output_folder(out):
        return _write_export(config, study, trial, out, how=how, finetune_epochs=finetune_epochs, say=say)


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
        shipped = ship(ctx, scoring, study, exported, candidate, out, accuracy, say)
    shipped["latency"]["search_median_ms"] = trial.values[1]
    card = {"study": config.name, "trial": trial.number, "chosen_by": how,
            "description": ctx.space.describe(candidate), "candidate": candidate, **shipped,
            "files": folder_files(out)}
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
