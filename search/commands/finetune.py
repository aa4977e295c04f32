"""`slimsearch finetune`: fine-tune a picked trial for many epochs, resumably, and write it as `export` does."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands.common import add_trial_args, console


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `finetune` sub-command to the parser."""
    p = sub.add_parser(
        "finetune", help="fine-tune a trial for many epochs (resumable): model.pt, model.onnx, card, accuracy curve",
        description="Fine-tune one trial of a run for many epochs with the project's trainer — cosine schedule, "
        "distilled from the base where the run has one, the recipe's data, batch size, learning rate and device "
        "unless given — checkpointed after every epoch, and write model.pt, model.onnx (checked against PyTorch), a "
        "card with the accuracy before and after and the speed-up timed again against the base, and the accuracy per "
        "epoch (finetune.csv, finetune.png). The same command continues a fine-tune that was stopped.",
    )
    add_trial_args(p, "fine-tune")
    p.add_argument("--epochs", type=float, required=True, help="epochs to fine-tune for (fractions allowed)")
    p.add_argument("--out", type=Path, help="folder to write into (default: RUN_DIR/finetune/trial-N)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's train.lr)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the recipe's train.batch_size)")
    p.add_argument("--kd-alpha", type=float,
                   help="weight of distillation from the base, 0 to 1 (default: the recipe's train.kd_alpha)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default: the recipe's)")
    p.add_argument("--start", choices=("searched", "built"), default="searched",
                   help="searched: the weights the search fine-tuned, where the trial kept them (front trials do); "
                   "built: its network as its candidate builds it (a compressed one: cut from the base, BatchNorm "
                   "recalibrated)")
    p.add_argument("--force", action="store_true", help="start over even where this fine-tune finished in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a line per epoch only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch finetune`; returns the exit code (130 when interrupted, the checkpoint kept)."""
    from search.export.finetune import Interrupted, finetune
    from search.export.finetune.api import default_out

    def say(message: str) -> None:
        console.print(message, highlight=False)

    try:
        card = finetune(args.run_dir, args.trial, args.epochs, pick=args.pick, out=args.out, lr=args.lr,
                        batch_size=args.batch_size, kd_alpha=args.kd_alpha, device=args.device, start=args.start,
                        force=args.force, say=say, progress=not args.no_progress)
    except Interrupted as exc:
        say(str(exc))
        return 130
    except KeyboardInterrupt:
        say("interrupted before the fine-tune began; nothing was written")
        return 130
    acc, lat, onnx, versus = card["accuracy"], card["latency"], card["onnx"], card["versus_base"]
    test = "no test split" if acc["test"] is None else f"test {acc['test_before']:.4f} → {acc['test']:.4f}"
    speed = "no base to compare with" if versus is None else (
        f"speed-up {versus['speedup']:.2f}×" + (f" [{versus['speedup_low']:.2f}–{versus['speedup_high']:.2f}]"
                                                if "speedup_low" in versus else "") + " against the base")
    say(f"{card['fine_tune']['epochs']:g} epochs: validation {acc['validation_before']:.4f} → {acc['validation']:.4f}, "
        f"{test}; {speed}; {lat['median_ms']:.4f} ms on {lat['backend']} ({lat['precision']}); "
        f"ONNX max abs diff {onnx['max_abs_diff']:.1e}")
    folder = args.out or default_out(args.run_dir, card["trial"])
    say("card: " + str(folder / "card.md") + "; curve: " + str(folder / card["fine_tune"]["plot"]))
    if not onnx["matches"]:
        console.print("[bold red]check failed:[/] ONNX output differs from PyTorch (see card.md)")
        return 1
    return 0
