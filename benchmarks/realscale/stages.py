"""The four stages of the real-scale benchmark (benchmarks/realscale/), and the clock that shares its time
budget among them: each stage takes what the earlier ones produced and returns the record the report shows."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import math
import shutil
import statistics
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.realscale.baselines import (
    describe_cost,
    latency_ms,
    match_tp_global,
    match_uniform,
    short_finetune,
    uniform_l1,
)
from benchmarks.realscale.report import FRONT_ZIP, TABLE_ZIP
from benchmarks.results import machine
from evaluators.latency import LatencyBackend, get_backend
from evaluators.splits import DataBundle, Split
from evaluators.to_onnx import export_onnx
from evaluators.train import FineTune, TrainSettings, evaluate, placed
from search.recipe.config import StudyConfig
from search.results.front import front_trials
from search.results.record import TrialRecord
from search.study.executors.inprocess import run_study
from spaces.compress import CompressSpace, build_model, load_checkpoint

CHECKPOINT = "resnet56_cifar10.pt"
SHARES = {"1": 170.0, "2": 150.0, "3": 45.0}
MINIMUM = {"2": 60.0, "3": 30.0, "4": 60.0}  # kept free for the stages after one that could run long
ZIP_LIMIT = 15 * 2**20  # ONNX bytes in one zip: a file that comes back from the GPU machine holds 16 MiB
STAGE2_TAIL = 25.0  # re-timing and exporting the front after the last trial
STAGE4_TAIL = 25.0  # timing and exporting the table after the fine-tunes
TEACHER_COST = 1.35  # a distilled epoch against a plain one: the teacher's forward pass on top
SPEEDUP_TARGET = 2.0


class Clock:
    """Seconds since the start against the run's budget, and what a stage may spend of it."""

    def __init__(self, budget: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    def share(self, stage: str) -> float | None:
        """The stage's share of the budget, less what the later stages need at least (None: no budget)."""
        if math.isinf(self.budget):
            return None
        later = sum(v for k, v in MINIMUM.items() if k > stage)
        return max(MINIMUM.get(stage, 10.0), min(SHARES.get(stage, math.inf), self.left() - later))


class Log:
    """Prints with the elapsed time, and keeps every line in log.txt of the output folder."""

    def __init__(self, clock: Clock, path: Path) -> None:
        self.clock = clock
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def __call__(self, message: str) -> None:
        line = f"[{self.clock.elapsed():6.1f} s] {message}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def torch_backend(config: StudyConfig) -> LatencyBackend:
    lat = config.latency
    return get_backend("torch", threads=lat.threads, max_seconds=lat.max_seconds, target_cv=lat.target_cv,
                       cuda_graph=lat.cuda_graph)


def model_name(config: StudyConfig) -> str:
    """The base network's short name (`resnet56` for `spaces.compress.nets:resnet56`)."""
    return config.space.base.model.rpartition(":")[2]


def new_base(config: StudyConfig, data: DataBundle) -> nn.Module:
    spec = config.space.base
    torch.manual_seed(config.seed)
    return build_model(spec.model, in_channels=data.in_channels, num_classes=data.num_classes,
                       image_size=data.image_size, kwargs=spec.kwargs)


def fit(model: nn.Module, data: DataBundle, settings: TrainSettings, *, teacher: nn.Module | None = None,
        seed: int = 0, budget_s: float | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train `model` in place with evaluators.train.FineTune (back on the CPU afterwards), an epoch at a time, and
    report what ran: epochs planned and run, steps, seconds, seconds per epoch and the last loss. Given a time
    budget, it measures the second epoch and, if the plan would not fit, shortens it (`FineTune.replan`: the
    schedule anneals over the shorter plan from where it is). Raises TrainingDiverged on NaN."""
    tune = FineTune(model, data, settings, seed, teacher)
    start, epoch_times = time.perf_counter(), []
    while tune.step < tune.total_steps:
        t_epoch = time.perf_counter()
        loss = tune.run_to(len(epoch_times) + 1)
        epoch_times.append(time.perf_counter() - t_epoch)
        if log:
            log(f"  epoch {len(epoch_times)}: loss {loss:.4f}, {epoch_times[-1]:.1f} s")
        if budget_s is not None and len(epoch_times) == 2 and tune.step < tune.total_steps:
            left = budget_s - (time.perf_counter() - start)
            fits = int(left / epoch_times[-1] * tune.steps_per_epoch) + tune.step
            if fits < tune.total_steps:
                tune.replan(fits / tune.steps_per_epoch)
                if log:
                    log(f"  budget {budget_s:.0f} s: schedule cut to {tune.total_steps / tune.steps_per_epoch:.1f} "
                        "epochs")
    return {
        "settings": dataclasses.asdict(settings), "epochs_planned": settings.epochs,
        "epochs_run": round(tune.step / tune.steps_per_epoch, 3), "steps": tune.step,
        "seconds": round(time.perf_counter() - start, 2), "epoch_seconds": [round(t, 2) for t in epoch_times],
        "final_loss": tune.loss, "images": tune.images, "device": settings.device,
    }


def accuracy(model: nn.Module, split: Split, device: str) -> float:
    """Top-1 accuracy of `model` on `split`, scored on `device` in batches of 1,000 (the model back on the CPU)."""
    with placed(device, model):
        return evaluate(model, split, batch_size=1000)


def stage1(config: StudyConfig, data: DataBundle, settings: TrainSettings, clock: Clock, out: Path,
           log: Log) -> tuple[nn.Module, Path, dict[str, Any]]:
    """Train the base; write its checkpoint with how it was made."""
    base, device = new_base(config, data), settings.device
    log(f"stage 1: training {config.space.base.model} ({sum(p.numel() for p in base.parameters()) / 1e6:.3f}M "
        f"params) for {settings.epochs:g} epochs on {len(data.train)} images, {device}")
    run = fit(base, data, settings, seed=config.seed, budget_s=clock.share("1"), log=log)
    val_acc, test_acc = accuracy(base, data.val, device), accuracy(base, data.test, device)
    path = out / CHECKPOINT
    provenance = {"model": config.space.base.model, "train": run, "val_accuracy": val_acc,
                  "test_accuracy": test_acc, "val_fraction": config.data.val_fraction, "seed": config.seed,
                  "torch": str(torch.__version__), "machine": machine(), "date": now()}
    torch.save({"state_dict": base.state_dict(), "provenance": provenance}, path)
    epochs = run["epoch_seconds"][1:] or run["epoch_seconds"]
    record = {**provenance, "checkpoint": str(path), "epoch_seconds_median": statistics.median(epochs),
              "summary": f"{model_name(config)} trained {run['epochs_run']:g} epochs (planned "
                         f"{run['epochs_planned']:g}) in {run['seconds']:.0f} s on {device}: validation {val_acc:.4f}, test {test_acc:.4f}."}
    log(f"stage 1: {record['summary']} → {path}")
    return base, path, record


def load_base(config: StudyConfig, data: DataBundle, checkpoint: Path) -> nn.Module:
    if not checkpoint.is_file():
        raise SystemExit(
            f"error: no base checkpoint at {checkpoint}: train it with stage 1 (--stages 1,2,3,4 on a CUDA GPU; see "
            "the README's Real-scale run) and copy resnet56_cifar10.pt there, or pass --checkpoint PATH")
    return load_checkpoint(new_base(config, data), checkpoint).eval()


def trial_row(trial: Any, base: dict[str, Any], backend: LatencyBackend, model: nn.Module, data: DataBundle,
              base_b1: float) -> dict[str, Any]:
    """A study trial as the report shows it, with its network timed again at batch 1."""
    ms_b1 = latency_ms(backend, model, data, 1)
    record = TrialRecord.of(trial)
    anchor = record.anchor
    keep = list(record.candidate["keep"].values()) or [1.0]
    label = (f"#{trial.number} {'uniform anchor' if anchor else 'searched'}, keep {statistics.fmean(keep):.2f} "
             f"[{min(keep):.2f}–{max(keep):.2f}]")
    return {
        "label": label, "trial": trial.number, "anchor": anchor, "val_acc": trial.values[0],
        "macs": record.macs, "params": record.params,
        "flops_reduction": 1 - record.macs / base["macs"],
        "params_reduction": 1 - record.params / base["params"],
        "ms_busy": trial.values[1], "speedup_busy": base["latency_ms"] / trial.values[1],
        "ms_b1": ms_b1, "speedup_b1": base_b1 / ms_b1, "onnx": f"front-{trial.number}.onnx",
        "candidate": record.candidate,
    }


def pick_near(rows: list[dict[str, Any]], target: float = SPEEDUP_TARGET) -> dict[str, Any] | None:
    """The front member nearest `target` speed-up at the busy batch, preferring a sampled policy over an
    anchor within 0.8–1.25 × the target."""
    if not rows:
        return None
    distance = lambda r: abs(math.log(r["speedup_busy"] / target))  # noqa: E731
    band = [r for r in rows if distance(r) <= math.log(1.25)]
    sampled = [r for r in band if not r["anchor"]]
    return min(sampled or band or rows, key=distance)


def stage2(config: StudyConfig, data: DataBundle, checkpoint: Path, trials: int | None, clock: Clock, out: Path,
           log: Log) -> tuple[dict[str, Any], CompressSpace]:
    """Run the study; re-time its front at batch 1 and pack the front's ONNX files."""
    shutil.rmtree(config.run_dir, ignore_errors=True)  # scratch: every run starts its study afresh
    share = clock.share("2")
    timeout = None if share is None else max(10.0, share - STAGE2_TAIL)
    log(f"stage 2: study {config.name}, {trials or config.search.trials} trials"
        + (f", no new trial after {timeout:.0f} s" if timeout else ""))
    study = run_study(config, trials=trials, timeout=timeout, show_progress=True)
    base = study.user_attrs["base"]
    space = CompressSpace(config.space, in_channels=data.in_channels, num_classes=data.num_classes,
                          image_size=data.image_size, checkpoint=checkpoint)
    backend = torch_backend(config)
    base_b1 = latency_ms(backend, space.base, data, 1)
    front = front_trials(study)
    rows, packed = [], 0
    with zipfile.ZipFile(out / FRONT_ZIP, "w", zipfile.ZIP_DEFLATED) as pack:
        for trial in front:
            model = space.build(TrialRecord.of(trial).candidate)
            rows.append(trial_row(trial, base, backend, model, data, base_b1))
            path = export_onnx(model, data.input_shape, config.run_dir / rows[-1]["onnx"], dynamic_batch=True)
            if packed + path.stat().st_size > ZIP_LIMIT:  # a returned file holds 16 MiB; weights barely compress
                rows[-1]["onnx"] = None
                continue
            packed += path.stat().st_size
            pack.write(path, rows[-1]["onnx"])
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    anchors = sum(TrialRecord.of(t).anchor for t in done)
    shutil.copy(config.run_dir / "study.db", out / "study.db")
    pick = pick_near(rows)
    record = {
        "base": {**base, "ms_b1": base_b1}, "trials": len(done), "anchors": anchors,
        "front": rows, "pick": pick and pick["trial"], "busy_batch": config.latency.batch_size,
        "summary": f"{len(done)} trials (the first {anchors}: uniform "
                   f"anchors), {config.search.sampler.upper()} over {len(space.groups)} per-group keep ratios in "
                   f"[{config.space.keep[0]:g}, {config.space.keep[1]:g}], each fine-tuned {config.train.epochs:g} "
                   f"epoch distilled from the base and timed at batch {config.latency.batch_size} "
                   f"({backend.device()}). Base: validation {base['accuracy']:.4f}, {base['latency_ms']:.3f} ms at "
                   f"batch {config.latency.batch_size}, {base_b1:.3f} ms at batch 1. Front: {len(rows)} policies"
                   + (f"; the one nearest {SPEEDUP_TARGET:g}× is #{pick['trial']} ({pick['speedup_busy']:.2f}×)."
                      if pick else "."),
    }
    log(f"stage 2: {record['summary']}")
    return record, space


def policy_record(label: str, model: nn.Module, base: nn.Module, data: DataBundle, config: StudyConfig,
                  backend: LatencyBackend, base_cost: dict[str, int], base_ms: tuple[float, float],
                  seed: int) -> dict[str, Any]:
    """A baseline policy at the study's fine-tune budget (fine-tuned in place): cost, accuracy, latency."""
    busy = config.latency.batch_size
    row = {"label": label, **describe_cost(model, data, base_cost), **short_finetune(model, base, data, config, seed)}
    row["ms_busy"], row["ms_b1"] = latency_ms(backend, model, data, busy), latency_ms(backend, model, data, 1)
    row["speedup_busy"], row["speedup_b1"] = base_ms[0] / row["ms_busy"], base_ms[1] / row["ms_b1"]
    return row


def stage3(config: StudyConfig, data: DataBundle, base: nn.Module, target_macs: int | None, grid: list[float],
           log: Log) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """Uniform L1 at the grid and at the matched keep ratio, Torch-Pruning global L1 at the matched pruning ratio,
    each given the study's fine-tune; returns the record and the matched networks as pruned (for stage 4)."""
    backend = torch_backend(config)
    base_cost = describe_cost(base, data, {"macs": 1, "params": 1})
    target = target_macs or base_cost["macs"] // 2
    busy = config.latency.batch_size
    base_ms = (latency_ms(backend, base, data, busy), latency_ms(backend, base, data, 1))
    round_to, keep_range = config.space.round_to, tuple(config.space.keep)
    policies, matched = [], {}
    for i, keep in enumerate(grid):
        model = uniform_l1(base, data, keep, round_to)
        policies.append(policy_record(f"uniform L1 keep {keep:g}", model, base, data, config, backend, base_cost,
                                      base_ms, config.seed + 1000 + i))
        log(f"stage 3: {policies[-1]['label']}: val {policies[-1]['val_acc']:.4f}, "
            f"{policies[-1]['speedup_busy']:.2f}×")
    keep, model = match_uniform(base, data, target, round_to, keep_range)
    matched["uniform"] = copy.deepcopy(model)
    policies.append(policy_record(f"uniform L1 keep {keep:g} (FLOPs-matched)", model, base, data, config, backend,
                                  base_cost, base_ms, config.seed + 2000))
    policies[-1].update(keep=keep, onnx="uniform.onnx")
    ratio, model = match_tp_global(base, data, target / base_cost["macs"], round_to)
    matched["tp_global"] = copy.deepcopy(model)
    policies.append(policy_record(f"Torch-Pruning global L1, pruning_ratio {ratio:g} (FLOPs-matched)", model, base,
                                  data, config, backend, base_cost, base_ms, config.seed + 3000))
    policies[-1].update(pruning_ratio=ratio, onnx="tp_global.onnx")
    for p in policies[-2:]:
        log(f"stage 3: {p['label']}: val {p['val_acc']:.4f}, FLOPs −{p['flops_reduction']:.1%}, "
            f"{p['speedup_busy']:.2f}×")
    record = {
        "target_macs": target, "base_ms": base_ms, "busy_batch": busy, "policies": policies,
        "summary": f"Every baseline gets the study's fine-tune (adaptive BN on {config.train.bn_batches} batches, "
                   f"{config.train.epochs:g} epoch distilled from the base). FLOPs target: {target / 1e6:.1f}M MACs "
                   f"({1 - target / base_cost['macs']:.1%} fewer than the base), the searched policy's"
                   + ("" if target_macs else " — none: half the base's, AMC's setting") + ".",
    }
    return record, matched


def finetune_epochs(requested: float, models: int, clock: Clock, base_epoch_s: float | None) -> float:
    """Epochs every stage-4 fine-tune gets: the request, or fewer so all fit in what is left of the budget."""
    if base_epoch_s is None or math.isinf(clock.left()):
        return requested
    fits = (clock.left() - STAGE4_TAIL) / (models * base_epoch_s * TEACHER_COST)
    return max(1.0, min(requested, math.floor(fits))) if requested >= 1 else requested


def stage4(config: StudyConfig, data: DataBundle, base: nn.Module, base_test: float,
           entries: list[tuple[str, str, str, nn.Module, dict[str, Any]]], settings: TrainSettings,
           clock: Clock, base_epoch_s: float | None, out: Path, log: Log) -> tuple[dict[str, Any], list]:
    """Fine-tune each (key, method, note, model, extra) longer, score it on the test split, time every model
    again back to back at both batches, pack their ONNX files; returns the record and the table rows."""
    device = settings.device
    epochs = finetune_epochs(settings.epochs, len(entries), clock, base_epoch_s)
    per_model = max(10.0, (clock.left() - STAGE4_TAIL) / max(1, len(entries))) if math.isfinite(clock.left()) else None
    log(f"stage 4: {len(entries)} fine-tunes of {epochs:g} epochs"
        + (f" (budget {per_model:.0f} s each)" if per_model else ""))
    base_cost = describe_cost(base, data, {"macs": 1, "params": 1})
    runs = []
    for i, (key, method, note, model, extra) in enumerate(entries):
        run = fit(model, data, dataclasses.replace(settings, epochs=epochs), teacher=base,
                  seed=config.seed + 4000 + i, budget_s=per_model and per_model * 1.5, log=None)
        if i == 0 and base_epoch_s is None:
            epochs = run["epochs_run"]
        runs.append(run)
        log(f"stage 4: {method}: {run['epochs_run']:g} epochs in {run['seconds']:.0f} s")
    backend = torch_backend(config)
    busy = config.latency.batch_size
    everything = [("base", base)] + [(key, model) for key, _, _, model, _ in entries]
    timed = {key: (latency_ms(backend, m, data, busy), latency_ms(backend, m, data, 1)) for key, m in everything}
    rows = [{"key": "base", "method": f"base: {model_name(config)}", "test_acc": base_test, "delta": 0.0,
             "flops_reduction": 0.0, "params_reduction": 0.0, "ms_busy": timed["base"][0], "ms_b1": timed["base"][1],
             "speedup_busy": 1.0, "speedup_b1": 1.0, "onnx": "base.onnx", "macs": base_cost["macs"],
             "params": base_cost["params"], "note": f"{sum(p.numel() for p in base.parameters()) / 1e6:.3f}M params"}]
    with zipfile.ZipFile(out / TABLE_ZIP, "w", zipfile.ZIP_DEFLATED) as pack:
        for (key, method, note, model, extra), run in zip(entries, runs):
            test_acc = accuracy(model, data.test, device)
            ms = timed[key]
            rows.append({
                "key": key, "method": method, "test_acc": test_acc, "delta": test_acc - base_test,
                "val_acc": accuracy(model, data.val, device), **describe_cost(model, data, base_cost),
                "ms_busy": ms[0], "ms_b1": ms[1], "speedup_busy": timed["base"][0] / ms[0],
                "speedup_b1": timed["base"][1] / ms[1], "onnx": f"{key}.onnx", "finetune": run,
                "note": f"{note}; {run['epochs_run']:g} epochs", **extra,
            })
        for row, (_, model) in zip(rows, everything):
            pack.write(export_onnx(model, data.input_shape, config.run_dir / row["onnx"], dynamic_batch=True),
                       row["onnx"])
    record = {
        "epochs": epochs, "busy_batch": busy,
        "summary": f"Stage 4: every method fine-tuned {epochs:g} epochs from its pruned base weights (batch "
                   f"{settings.batch_size}, one-cycle to {settings.lr:g}, label smoothing "
                   f"{settings.label_smoothing:g}, distilled from the base with α {settings.kd_alpha:g}, T "
                   f"{settings.kd_temperature:g}); test "
                   f"accuracy on the {len(data.test):,} test images; FLOPs and parameters by fvcore; speed-ups are "
                   f"measured latencies against the base's (torch backend, fp32, on {backend.device()}"
                   f"{', CUDA graph' if config.latency.cuda_graph and device == 'cuda' else ''}), timed back to back "
                   f"at batch {busy} and 1; the CPU ORT column is ONNX Runtime on one thread at batch 1, filled in by "
                   "`--time-onnx`.",
    }
    for row in rows:
        log(f"stage 4: {row['method']}: test {row['test_acc']:.4f}, FLOPs −{row['flops_reduction']:.1%}, "
            f"{row['speedup_busy']:.2f}× at batch {busy}, {row['speedup_b1']:.2f}× at batch 1")
    return record, rows


def now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def failure(exc: Exception, start: float, log: Log, stage: str) -> dict[str, Any]:
    log(f"stage {stage} failed: {type(exc).__name__}: {exc}")
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
            "seconds": round(time.perf_counter() - start, 1)}


def stage4_entries(pick_row: dict[str, Any] | None, pick_model: nn.Module | None, policies: list[dict[str, Any]],
                   matched: dict[str, nn.Module]) -> list[tuple[str, str, str, nn.Module, dict[str, Any]]]:
    """What stage 4 fine-tunes: the study's policy nearest 2× and the baselines matched to its FLOPs, each as
    (key, method, note, network as pruned, extra fields of its row)."""
    entries = []
    if pick_row is not None and pick_model is not None:
        entries.append((f"searched-{pick_row['trial']}", f"slimsearch study, {pick_row['label']}",
                        f"study trial #{pick_row['trial']}, {pick_row['speedup_busy']:.2f}× in the study",
                        pick_model, {"trial": pick_row["trial"]}))
    for key, method, note in (
        ("uniform", "uniform L1, FLOPs-matched", "slimsearch `compress`, keep {keep:g}"),
        ("tp_global", "Torch-Pruning global L1, FLOPs-matched",
         "tp.pruner.MetaPruner, global_pruning, pruning_ratio {pruning_ratio:g}"),
    ):
        row = next((p for p in policies if p.get("onnx") == f"{key}.onnx"), None)
        if key in matched and row is not None:
            entries.append((key, method, note.format(**row), matched[key],
                            {k: row[k] for k in ("keep", "pruning_ratio") if k in row}))
    return entries
