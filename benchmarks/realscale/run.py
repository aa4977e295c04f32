"""Real scale, in AMC's own setting: CIFAR ResNet-56 on CIFAR-10 trained, searched, compressed and measured on
one GPU, in one command of four stages. Each stage writes its results to `--out` (results.json, results.md)
as soon as it ends, so a run cut off by its time limit still returns what it finished.

1. Train ResNet-56 (spaces.compress.nets:resnet56) on the recipe's training split (45,000 images; the 5,000
   held out score candidates; the 10,000 test images are kept for the table) with the study's own trainer,
   evaluators.train (bf16 autocast, channels_last, the data on the GPU as uint8, flips and crops drawn there):
   batch 512, SGD + Nesterov, one-cycle to 0.4, label smoothing 0.1, 40 epochs. Writes resnet56_cifar10.pt,
   the checkpoint the recipe names.
2. The compression study of studies/cifar10_resnet56_prune.yaml through `search.study.executors.inprocess.run_study`
   (uniform anchors first, then TPE over 30 per-group keep ratios; each trial fine-tuned on the GPU and timed
   with the torch backend at batch 256); its front re-timed at batch 1 and exported to ONNX (front_onnx.zip).
3. Baselines at the study's fine-tune budget: uniform L1 pruning at several keep ratios and at the keep ratio
   whose FLOPs match the searched policy nearest 2× speed-up, and Torch-Pruning's global L1 pruning
   (`MetaPruner`, `global_pruning=True`) at the pruning ratio that matches the same FLOPs.
4. A longer fine-tune (the same trainer, distilled from the base) of that searched policy and its two
   matches, test accuracy, every model timed again back to back at batch 256 and 1, ONNX files packed
   (table_onnx.zip), and the table beside AMC's and Torch-Pruning's published ResNet-56 figures.

Time budget (`--budget`, default 480 s from the start, data decoding included): stage 1 up to 170 s (its
schedule is cut after epoch 2 if 40 epochs would not fit), stage 2 up to 150 s (no trial starts after that),
stage 3 about 40 s, stage 4 the rest (its epochs chosen so the three fine-tunes fit, at most 20).

The GPU run — one NVIDIA H200, 16 cores; run's carry [".whl", ".pack"], timeout_s 600:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 -m benchmarks.realscale --data .pack/cifar10.jpgpack

made ready here by `python -m benchmarks.realscale --pack-data` (the JPEGs of ../shared/datasets/cifar10 as
one 18 MB file, .pack/cifar10.jpgpack) and `bash benchmarks/realscale/wheels.sh` (.whl/). Seven files come
back: resnet56_cifar10.pt, results.json, results.md, study.db, front_onnx.zip, table_onnx.zip, log.txt.
Then, here: `python -m benchmarks.realscale --time-onnx FOLDER --write-results` times the packed ONNX files
with ONNX Runtime on this CPU, fills the table's CPU column and writes the section of benchmarks/RESULTS.md.
`--smoke` runs every stage at toy size on any machine (tests/test_realscale.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.realscale.data import decode, pack_summary, read_folder, read_pack, write_cifar_batches, write_pack
from benchmarks.realscale.report import Results, time_onnx, write_results
from benchmarks.realscale.stages import (
    CHECKPOINT,
    Clock,
    Log,
    accuracy,
    failure,
    load_base,
    now,
    stage1,
    stage2,
    stage3,
    stage4,
    stage4_entries,
)
from benchmarks.results import ROOT, command_line, machine
from evaluators.splits import DataBundle, load_data
from evaluators.train import TrainSettings
from search.recipe.config import StudyConfig, load_config

RECIPE = ROOT / "studies" / "cifar10_resnet56_prune.yaml"
PACK = ROOT / ".pack" / "cifar10.jpgpack"
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"
BASE_TRAINING = TrainSettings(epochs=40, batch_size=512, lr=0.4, weight_decay=5e-4, label_smoothing=0.1, warmup=0.15)
FINETUNE = TrainSettings(epochs=20, batch_size=512, lr=0.1, weight_decay=5e-4, label_smoothing=0.1, warmup=0.1,
                         kd_alpha=0.5, kd_temperature=4.0)
SMOKE_SET = ["search.trials=3", "search.startup_trials=2", "search.anchors=1", "train.epochs=0.3",
             "train.batch_size=32", "train.bn_batches=2", "latency.batch_size=4", "latency.max_seconds=0.05",
             "latency.target_cv=0.5"]
SMOKE_EPOCHS = (0.5, 0.5)  # the base's and stage 4's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.realscale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="JPEG pack or ImageFolder root (default: .pack/cifar10.jpgpack "
                        "if present, else ../shared/datasets/cifar10)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs/realscale/out"),
                        help="where results go (default $OUT, else runs/realscale/out)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/realscale/work",
                        help="scratch space: decoded data and the study's run directory (reset each run)")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoint", type=Path, help="base weights for stages 2-4 (default: the recipe's)")
    parser.add_argument("--stages", default="auto",
                        help="comma-separated stages to run; auto: 1-4, or 2-4 when the recipe's checkpoint exists")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all stages (see the docstring)")
    parser.add_argument("--base-epochs", type=float, default=BASE_TRAINING.epochs)
    parser.add_argument("--finetune-epochs", type=float, default=FINETUNE.epochs, help="stage 4, at most")
    parser.add_argument("--trials", type=int, help="study trials (default: the recipe's)")
    parser.add_argument("--grid", type=float, nargs="+", default=[0.4, 0.55, 0.7, 0.85], help="uniform keep ratios")
    parser.add_argument("--workers", type=int, help="processes that decode the JPEGs (default: every core)")
    parser.add_argument("--smoke", action="store_true", help="every stage at toy size (seconds on a CPU)")
    parser.add_argument("--pack-data", type=Path, nargs="?", const=PACK, metavar="PACK",
                        help="pack --cifar-root's JPEGs into PACK (default .pack/cifar10.jpgpack) and exit")
    parser.add_argument("--cifar-root", type=Path, default=CIFAR)
    parser.add_argument("--per-class", type=int, nargs=2, metavar=("TRAIN", "TEST"),
                        help="with --pack-data: only the first images of each class")
    parser.add_argument("--time-onnx", type=Path, metavar="FOLDER",
                        help="time the ONNX files a GPU run packed in FOLDER on this CPU; results go to --out")
    parser.add_argument("--report", type=Path, metavar="FOLDER", help="render FOLDER/results.json again into --out")
    parser.add_argument("--write-results", action="store_true", help="write the report into benchmarks/RESULTS.md")
    parser.add_argument("--results-file", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def selected_stages(spec: str, checkpoint: Path) -> list[str]:
    if spec == "auto":
        return ["2", "3", "4"] if checkpoint.is_file() else ["1", "2", "3", "4"]
    stages = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in stages if s not in ("1", "2", "3", "4")]
    if bad:
        raise SystemExit(f"error: --stages {spec!r}: unknown stage(s) {bad}; the stages are 1, 2, 3 and 4")
    return sorted(set(stages))


def pack_data(args: argparse.Namespace) -> None:
    per_class = {"train": args.per_class[0], "test": args.per_class[1]} if args.per_class else None
    encoded = read_folder(args.cifar_root, per_class)
    info = write_pack(encoded, args.pack_data)
    print(f"packed {pack_summary(encoded)} from {args.cifar_root}: {info['jpeg_bytes'] / 2**20:.1f} MiB of JPEG "
          f"as {info['bytes'] / 2**20:.1f} MiB ({info['prefix_bytes']}-byte common prefix) in {args.pack_data}")


def prepare_data(source: Path, work: Path, config_path: Path, overrides: list[str], workers: int | None,
                 log: Log) -> tuple[StudyConfig, DataBundle, dict[str, Any]]:
    """Decode the images (in parallel) into CIFAR-10's python batches under `work`, and the recipe pointed at
    them; returns the recipe, the data split as the study splits it, and what was read."""
    t = time.perf_counter()
    encoded = read_pack(source) if source.is_file() else read_folder(source)
    decoded = decode(encoded, workers)
    root = write_cifar_batches(decoded, work / "cifar10")
    config = load_config(config_path, [*overrides, f"data.root={root}", f"output_dir={work / 'runs'}"])
    data = load_data("cifar10", root, None, config.data.val_fraction, config.seed)
    info = {"source": str(source), "images": pack_summary(encoded), "train": len(data.train), "val": len(data.val),
            "test": len(data.test), "seconds": round(time.perf_counter() - t, 2)}
    log(f"data: {info['images']} from {source} → {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test in {info['seconds']:.1f} s")
    return config, data, info


def run(args: argparse.Namespace) -> Results:
    clock = Clock(math.inf if args.smoke else args.budget)
    out = args.out
    log = Log(clock, out / "log.txt")
    overrides = [*(SMOKE_SET if args.smoke else []), *args.overrides]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base_training = dataclasses.replace(BASE_TRAINING, epochs=args.base_epochs, device=device)
    finetune = dataclasses.replace(FINETUNE, epochs=args.finetune_epochs, device=device)
    if args.smoke:
        base_training = dataclasses.replace(base_training, epochs=SMOKE_EPOCHS[0], batch_size=64)
        finetune = dataclasses.replace(finetune, epochs=SMOKE_EPOCHS[1], batch_size=64)
    source = args.data or (PACK if PACK.is_file() else CIFAR)
    config, data, data_info = prepare_data(source, args.work, args.recipe, overrides, args.workers, log)
    checkpoint = args.checkpoint or Path(config.space.base.checkpoint or ROOT / "benchmarks/checkpoints" / CHECKPOINT)
    stages = selected_stages(args.stages, checkpoint)
    results = Results(out)
    results.data["meta"] = {
        "command": command_line(), "machine": machine(), "date": now(), "torch": str(torch.__version__),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "budget_s": clock.budget,
        "stages": stages, "recipe": str(args.recipe), "overrides": overrides, "busy_batch": config.latency.batch_size,
        "timing_device": "GPU" if device == "cuda" else "CPU",
    }
    results.stage("data", data_info)
    base_epoch_s = None
    if "1" in stages:
        t = time.perf_counter()
        base, checkpoint, record = stage1(config, data, base_training, clock, out, log)
        base_epoch_s = record["epoch_seconds_median"]
        results.stage("1", {**record, "seconds": round(time.perf_counter() - t, 1)})
    else:
        base = load_base(config, data, checkpoint)
    base_test = accuracy(base, data.test, device)
    config = load_config(args.recipe, [*overrides, f"data.root={config.data.root}", f"output_dir={config.output_dir}",
                                       f"space.base.checkpoint={checkpoint}"])
    target_macs, pick_model, pick_row = None, None, None
    if "2" in stages:
        t = time.perf_counter()
        try:
            record, space = stage2(config, data, checkpoint, args.trials, clock, out, log)
            pick_row = next((r for r in record["front"] if r["trial"] == record["pick"]), None)
            if pick_row is not None:
                target_macs, pick_model = pick_row["macs"], space.build(pick_row["candidate"])
            results.stage("2", {**record, "seconds": round(time.perf_counter() - t, 1)})
        except Exception as exc:  # a failed stage is recorded; the stages that do not need it still run
            results.stage("2", failure(exc, t, log, "2"))
    matched: dict[str, nn.Module] = {}
    if "3" in stages:
        t = time.perf_counter()
        try:
            record, matched = stage3(config, data, base, target_macs, [] if args.smoke else args.grid, log)
            results.stage("3", {**record, "seconds": round(time.perf_counter() - t, 1)})
        except Exception as exc:  # see above
            results.stage("3", failure(exc, t, log, "3"))
    if "4" in stages:
        t = time.perf_counter()
        entries = stage4_entries(pick_row, pick_model, results.data["stages"].get("3", {}).get("policies", []),
                                 matched)
        try:
            record, rows = stage4(config, data, base, base_test, entries, finetune, clock,
                                  base_epoch_s, out, log)
            results.data["table"] = rows
            results.stage("4", {**record, "seconds": round(time.perf_counter() - t, 1)})
        except Exception as exc:  # see above
            results.stage("4", failure(exc, t, log, "4"))
    log(f"done in {clock.elapsed():.0f} s; results in {out}")
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.pack_data:
        pack_data(args)
        return
    if args.time_onnx:
        results = time_onnx(args.time_onnx, args.out, command_line())
    elif args.report:
        results = Results.load(args.report, args.out)
        results.save()
    else:
        results = run(args)
    if args.write_results:
        print(f"wrote {write_results(results, args.results_file)}")

