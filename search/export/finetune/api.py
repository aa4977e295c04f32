"""`finetune`: a picked trial of a run (or, for the comparison benchmarks, a network cut from the run's base by other
means) fine-tuned for many epochs with the project's one trainer and written where `export` writes — model.pt,
model.onnx checked against PyTorch, a TensorRT engine where one can be built — with a card that adds the fine-tune,
the accuracy before and after, and the speed-up timed again interleaved with the base; the accuracy per epoch kept
as finetune.csv and drawn as finetune.png. It checkpoints after every epoch and continues from there when called
again with the same arguments; a finished one is not run again unless `force`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import torch.nn as nn

from evaluators.onnx_model import ExportedModel
from evaluators.splits import Split
from evaluators.train import FineTune, TrainSettings
from search.export.card import write_card
from search.export.files import check_base_files, folder_files, output_folder, ship
from search.export.finetune.curves import history_curves, plot_curves
from search.export.finetune.epochs import Interrupted, history_row, scores, train_epochs
from search.export.finetune.plan import FineTunePlan
from search.export.finetune.store import CHECKPOINT, PLOT, Saved, matching, read, remove_leftovers, save
from search.export.finetune.subjects import Subject, network_subject, trial_identity, trial_subject
from search.export.picks import choose_trial
from search.recipe.config import StudyConfig
from search.study.storage import open_study
from search.trial.build import build_context
from search.trial.context import StudyContext
from search.trial.scoring import Scoring, scoring_for, train_settings
from spaces.compress import fingerprint

FOLDER = "finetune"  # a trial's fine-tune goes to RUN_DIR/finetune/trial-N unless told otherwise

MakeSubject = Callable[[StudyContext, Scoring], Subject]


def finetune(
    run_dir: str | Path, trial: int | None, epochs: float, *, pick: str | None = None, out: str | Path | None = None,
    lr: float | None = None, batch_size: int | None = None, kd_alpha: float | None = None, device: str | None = None,
    start: str = "searched", force: bool = False, say: Callable[[str], None] = print, progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune trial `trial` of the run in `run_dir` (or the one `pick` selects from its front) for `epochs` on
    a cosine schedule, distilled from the base where the run has one; the recipe's data, batch size, learning rate and
    device unless given. Writes into `out` (default RUN_DIR/finetune/trial-N) and returns the card. Bad input is a
    UsageError raised before anything is written; Ctrl-C raises `Interrupted` with the last checkpoint kept."""
    plan = FineTunePlan(epochs, lr, batch_size, kd_alpha, device, start)
    plan.check()
    config, study = open_study(run_dir)
    chosen = choose_trial(study, trial, pick)
    how = f"--trial {trial}" if trial is not None else f"--pick {pick or 'knee'}"
    folder = Path(out) if out is not None else default_out(Path(run_dir), chosen.number)
    return _fine_tune(
        config, study, plan, folder, f"trial #{chosen.number}", trial_identity(config.name, chosen),
        lambda ctx, scoring: trial_subject(ctx, scoring, chosen, how, plan.start, say), force, say, progress,
    )


def default_out(run_dir: Path, trial: int) -> Path:
    """Where a trial's fine-tune goes unless told otherwise: RUN_DIR/finetune/trial-N."""
    return Path(run_dir) / FOLDER / f"trial-{trial}"


def finetune_network(
    run_dir: str | Path, network: nn.Module, name: str, epochs: float, *, out: str | Path, lr: float | None = None,
    batch_size: int | None = None, kd_alpha: float | None = None, device: str | None = None, force: bool = False,
    say: Callable[[str], None] = print, progress: bool = True,
) -> dict[str, Any]:
    """`finetune` for a network cut from the run's base by other means (a benchmark's baseline), named `name`:
    BatchNorm recalibrated as the study prepares a candidate, then the same fine-tune, files and card. The folder
    `out` holds the fine-tune of these very weights (their SHA-256) and no other."""
    plan = FineTunePlan(epochs, lr, batch_size, kd_alpha, device, "built")
    plan.check()
    config, study = open_study(run_dir)
    identity = {"study": config.name, "network": name, "weights_sha256": fingerprint(network)}
    return _fine_tune(config, study, plan, Path(out), name, identity,
                      lambda ctx, scoring: network_subject(ctx, scoring, network, name), force, say, progress)


def _fine_tune(
    config: StudyConfig, study: optuna.Study, plan: FineTunePlan, out: Path, label: str, network: dict[str, Any],
    make_subject: MakeSubject, force: bool, say: Callable[[str], None], progress: bool,
) -> dict[str, Any]:
    """Check the output folder, then start, continue or skip the fine-tune of `make_subject`'s network there."""
    identity = {"network": network, "plan": plan.identity(train_settings(config))}
    saved = matching(out, identity, force)
    if saved is not None and saved.finished and (out / "card.json").is_file():
        say(f"{label} is already fine-tuned for {plan.epochs:g} epochs in {out} (card.md); --force runs it again")
        return json.loads((out / "card.json").read_text())
    check_base_files(config)
    ctx = build_context(config)
    scoring = scoring_for(ctx)
    scoring.attach(study)
    subject = make_subject(ctx, scoring)
    settings = plan.settings(scoring.settings, config.train.device, distilled=subject.teacher is not None)
    say(f"fine-tuning {label} of {config.name} for {plan.epochs:g} epochs on {settings.device} into {out}")
    say(_distillation(settings, subject))
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    with output_folder(out, keep=lambda: (out / CHECKPOINT).is_file()), tempfile.TemporaryDirectory() as tmp:
        try:
            remove_leftovers(out)
            model = subject.build()
            if saved is None:
                tune, saved = _begin(ctx, scoring, subject, model, settings, identity, out, Path(tmp))
            else:
                tune = FineTune(model, ctx.data, settings, seed=subject.seed, teacher=subject.teacher)
                tune.load_state_dict(saved.state)
                say(f"continuing {label} from epoch {saved.epochs_done:g} of {plan.epochs:g} ({out / CHECKPOINT})")
            train_epochs(tune, saved, out, label, scoring.validation(), _test(ctx), say, progress)
            return _finish(ctx, scoring, study, subject, tune, saved, out, Path(tmp), say)
        except KeyboardInterrupt:
            kept = read(out)
            if kept is None:
                raise
            raise Interrupted(out, kept.epochs_done, plan.epochs) from None


def _distillation(settings: TrainSettings, subject: Subject) -> str:
    """What the fine-tune distils from, in a line."""
    if subject.teacher is None:
        return "no distillation: the run has no base network to distil from (a blocks study); training on labels alone"
    if settings.kd_alpha == 0:
        return "no distillation: kd_alpha is 0; training on labels alone"
    return f"distilled from the base network (kd_alpha {settings.kd_alpha:g}, temperature {settings.kd_temperature:g})"


def _test(ctx: StudyContext) -> Split | None:
    """The held-out test images (None where the data set has none)."""
    return ctx.data.test if len(ctx.data.test) else None


def _at_precision(
    scoring: Scoring, chosen: dict[str, Any], exported: Callable[[], ExportedModel], fp32: tuple[float, float | None],
    val: Split, test: Split | None,
) -> tuple[float, float | None]:
    """Validation and test accuracy at the network's scoring precision: its `fp32` ones where that is fp32, else
    those of the converted model in ONNX Runtime (`exported()` made only then)."""
    if scoring.accuracy_precision(chosen) == "fp32":
        return fp32
    model = exported()
    return (scoring.accuracy(model.module, model, chosen, val),
            None if test is None else scoring.accuracy(model.module, model, chosen, test))


def _begin(
    ctx: StudyContext, scoring: Scoring, subject: Subject, model: nn.Module, settings: TrainSettings,
    identity: dict[str, Any], out: Path, tmp: Path,
) -> tuple[FineTune, Saved]:
    """Put the starting weights into `model`, score them (at the network's precision for the card, in fp32 for the
    history) and write the first checkpoint: the trainer's state before its first step."""
    started_from = subject.start(model, tmp)
    chosen, val, test = subject.candidate or {}, scoring.validation(), _test(ctx)
    v, t = scores(model, settings.device, val, test)
    v_at, t_at = _at_precision(scoring, chosen, lambda: ExportedModel(model, ctx.data.input_shape, tmp / "start"),
                               (v, t), val, test)
    start = {"from": started_from, "validation": v_at, "test": t_at, "precision": scoring.accuracy_precision(chosen)}
    tune = FineTune(model, ctx.data, settings, seed=subject.seed, teacher=subject.teacher)
    saved = Saved(identity, [history_row(tune, 0.0, 1, v, t)], tune.state_dict(), start)
    save(out, saved)
    return tune, saved


def _finish(
    ctx: StudyContext, scoring: Scoring, study: optuna.Study, subject: Subject, tune: FineTune, saved: Saved,
    out: Path, tmp: Path, say: Callable[[str], None],
) -> dict[str, Any]:
    """Write the fine-tuned network's files, the curve and the card; mark the checkpoint finished."""
    s, model, chosen = tune.settings, tune.model, subject.candidate or {}
    exported = ExportedModel(model, ctx.data.input_shape, tmp / "fine-tuned")
    val, test, last, start = scoring.validation(), _test(ctx), saved.history[-1], saved.start
    v, t = _at_precision(scoring, chosen, lambda: exported, (last["validation"], last["test"]), val, test)
    accuracy = {"precision": start["precision"], "validation_before": start["validation"], "validation": v,
                "validation_images": len(val), "test_before": start["test"], "test": t, "test_images": len(ctx.data.test)}
    shipped = ship(ctx, scoring, study, exported, subject.candidate, out, accuracy, say)
    if subject.card["search"]:
        shipped["latency"]["search_median_ms"] = subject.card["search"]["latency_ms"]
    plot_curves(out / PLOT, f"{ctx.config.name}, {subject.label}: accuracy per epoch ({s.epochs:g} epochs, cosine)",
                history_curves(saved.history))
    fine_tune = {
        "epochs": s.epochs, "schedule": s.schedule, "warmup_epochs": round(s.warmup * s.epochs, 4), "lr": s.lr,
        "batch_size": s.batch_size, "momentum": s.momentum, "weight_decay": s.weight_decay,
        "kd_alpha": s.kd_alpha, "kd_temperature": s.kd_temperature,
        "distilled_from": None if subject.teacher is None or s.kd_alpha == 0 else "the base network",
        "distillation": _distillation(s, subject), "started_from": start["from"], "images_per_epoch": tune.images,
        "steps": tune.step, "seconds": round(tune.seconds, 1), "sessions": saved.sessions,
        "devices": sorted({str(r["device"]) for r in saved.history[1:]}), "history": "finetune.csv", "plot": PLOT,
    }
    card = {**subject.card, **shipped, "fine_tune": fine_tune}
    card["files"] = folder_files(out)
    write_card(card, out)
    saved.finished = True
    save(out, saved)
    return card
