"""`slimsearch export`: write a chosen trial's model (PyTorch, ONNX, TensorRT) and its card."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands.common import add_trial_args, console
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `export` sub-command to the parser."""
    p = sub.add_parser(
        "export", help="export a trial: model.pt, model.onnx, a TensorRT engine where possible, card.md/json",
        description="Export one trial of a run, re-measured: its weights (model.pt + candidate.json), model.onnx "
        "(checked against PyTorch), a TensorRT engine where TensorRT runs, and a model card.",
    )
    add_trial_args(p, "export")
    p.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    p.add_argument("--finetune-epochs", type=float, help="fine-tune this many more epochs before exporting")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch export`; returns the exit code."""
    from search.export.picks import choose_trial
    from search.export.trial import export_trial
    from search.study.storage import open_study

    if args.finetune_epochs is not None and args.finetune_epochs <= 0:
        raise UsageError(f"--finetune-epochs: expected a positive number of epochs, got {args.finetune_epochs}")
    config, study = open_study(args.run_dir)
    trial = choose_trial(study, args.trial, args.pick)
    how = f"--trial {args.trial}" if args.trial is not None else f"--pick {args.pick}"
    console.print(f"exporting trial #{trial.number} of {config.name} ({how}) to {args.out}", highlight=False)
    card = export_trial(config, study, trial, args.out, how=how, finetune_epochs=args.finetune_epochs,
                        say=lambda m: console.print(m, highlight=False))
    acc, lat, onnx = card["accuracy"], card["latency"], card["onnx"]
    console.print(
        f"accuracy {acc['validation']:.4f} validation (search: {acc['search']:.4f}"
        + (f" at rung {acc['search_rung']}" if acc["matches_search"] is None else "") + f"), {acc['test']:.4f} test; "
        f"{lat['median_ms']:.4f} ms on {lat['backend']} ({lat['precision']}); "
        f"ONNX max abs diff {onnx['max_abs_diff']:.1e}", highlight=False,
    )
    console.print("wrote " + ", ".join(str(args.out / f) for f in sorted(p.name for p in args.out.iterdir())),
                  highlight=False)
    failed = [what for what, ok in (("ONNX output differs from PyTorch", onnx["matches"]),
                                    ("stored weights do not reproduce the trial's accuracy", acc["matches_search"]))
              if ok is False]
    for what in failed:
        console.print(f"[bold red]check failed:[/] {what} (see card.md)")
    return 1 if failed else 0
