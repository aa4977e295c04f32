"""The model card of an export or a long fine-tune: card.json (everything measured) and card.md (the same, for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VERSUS_BASE = {  # how each comparison with the base reads: ratios as ×, shares and changes as percentages
    "compression": lambda v: f"params {v:.2f}× fewer",
    "flops_reduction": lambda v: f"FLOPs {-100 * v:+.1f}%",
    "speedup": lambda v: f"speedup {v:.2f}×",
    "accuracy_change": lambda v: f"accuracy {100 * v:+.2f} points",
}


def versus_base_line(base: dict[str, Any]) -> str:
    """A candidate against its base in one line, each number in its own unit, e.g. `params 2.59× fewer, FLOPs
    -33.4%, speedup 0.45×, accuracy -1.20 points`."""
    parts = []
    for k, v in base.items():
        if k in ("base", "speedup_low", "speedup_high"):
            continue
        text = VERSUS_BASE[k](v) if k in VERSUS_BASE else f"{k.replace('_', ' ')} {v:.3f}"
        if k == "speedup" and "speedup_low" in base:
            text += f" [{base['speedup_low']:.2f}–{base['speedup_high']:.2f}, timed interleaved with the base]"
        parts.append(text)
    return ", ".join(parts)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def _export_rows(card: dict[str, Any], at: str) -> list[tuple[str, str]]:
    """An export's accuracy: the trial's weights scored again, on validation (matching the search) and test images."""
    acc = card["accuracy"]
    if acc["matches_search"] is None:
        validation = (f"{acc['validation']:.4f} on {acc['validation_images']} images ({at}) after the whole fine-tune; "
                      f"the search stopped it at rung {acc['search_rung']} ({acc['search_epochs']:g} epochs) with "
                      f"{acc['search']:.4f}")
    else:
        validation = (f"{acc['validation']:.4f} on {acc['validation_images']} images ({at}); the search measured "
                      f"{acc['search']:.4f}, and the stored weights give the same within ±1 image "
                      f"({acc['tolerance']:.4f}): {_yes(acc['matches_search'])}")
    if acc["fine_tune_epochs"]:
        validation += (f"; after {acc['fine_tune_epochs']:g} more epoch(s) of fine-tuning "
                       f"(from {acc['before_fine_tune']:.4f})")
    return [("accuracy, validation", validation),
            ("accuracy, test", f"{acc['test']:.4f} on {acc['test_images']} held-out images ({at})")]


def _fine_tune_rows(card: dict[str, Any], at: str) -> list[tuple[str, str]]:
    """A long fine-tune's rows: how it trained, from what, and the accuracy before and after."""
    ft, acc = card["fine_tune"], card["accuracy"]
    sessions = f" in {ft['sessions']} sittings" if ft["sessions"] > 1 else ""
    how = (f"{ft['epochs']:g} epochs of {ft['images_per_epoch']} images ({ft['steps']} steps of batch "
           f"{ft['batch_size']}), {ft['schedule']} schedule from lr {ft['lr']:g} after {ft['warmup_epochs']:g} epoch(s) "
           f"of linear warm-up, SGD with Nesterov momentum {ft['momentum']:g}, weight decay {ft['weight_decay']:g}; "
           f"{ft['distillation']}; {ft['seconds']:.0f} s of training{sessions} on {', '.join(ft['devices'])}")
    search, measured = card.get("search"), ""
    if search:
        measured = ("; the search screened it without a fine-tune" if search.get("screened") else
                    f"; the search measured {search['accuracy']:.4f}")
    validation = (f"{acc['validation_before']:.4f} → **{acc['validation']:.4f}** on {acc['validation_images']} "
                  f"images ({at}){measured}")
    test = ("the dataset has no test split" if acc["test"] is None else
            f"{acc['test_before']:.4f} → **{acc['test']:.4f}** on {acc['test_images']} held-out images ({at})")
    return [("fine-tune", how), ("started from", ft["started_from"]), ("accuracy, validation", validation),
            ("accuracy, test", test),
            ("per epoch", f"`{ft['history']}` and `{ft['plot']}`: fp32 accuracy after each epoch (epoch 0: the start)")]


def render_markdown(card: dict[str, Any]) -> str:
    """card.md: a short table of what the export (or the fine-tune) measured and how to load it."""
    acc, lat, cost, onnx, trt = card["accuracy"], card["latency"], card["cost"], card["onnx"], card["tensorrt"]
    shape = "×".join(str(d) for d in card["input_shape"])
    at = "PyTorch" if acc["precision"] == "fp32" else f"{acc['precision']} in ONNX Runtime"
    fine_tuned = "fine_tune" in card
    low_precision = ""
    if "at_precision" in onnx:
        low_precision = f"; {onnx['at_precision']}: the same network at {lat['precision']}"
    searched = f"; the search measured {lat['search_median_ms']:.4f} ms" if "search_median_ms" in lat else ""
    rows = [
        ("dataset", f"{card['dataset']}, input {shape}, {card['num_classes']} classes"),
        *(_fine_tune_rows(card, at) if fine_tuned else _export_rows(card, at)),
        ("latency", f"{lat['median_ms']:.4f} ms median (p90 {lat['p90_ms']:.4f} ms, {lat['runs']} runs), "
                    f"{lat['backend']} {lat['backend_version']} on {lat['device']}, {lat['precision']}, "
                    f"batch {lat['batch_size']}{searched}"),
        ("FLOPs / MACs / params", f"{_si(cost['flops'])} / {_si(cost['macs'])} / {_si(cost['params'])}"),
        ("ONNX", f"{onnx['file']}, opset {onnx['opset']}, dynamic batch; max abs difference from PyTorch "
                 f"{onnx['max_abs_diff']:.2e} over {onnx['checked_images']} images (tolerance "
                 f"{onnx['tolerance']:.0e}): {_yes(onnx['matches'])}" + low_precision),
        ("TensorRT", trt.get("note") or f"{trt['file']}, {trt['precision']}, batch {trt['batch_size']}, "
                     f"{trt['median_ms']:.4f} ms median on {trt['device']} (TensorRT {trt['backend_version']})"),
    ]
    base = card.get("versus_base")
    if base:
        rows.append(("versus base", versus_base_line(base)))
    dropped = (card.get("candidate") or {}).get("drop")
    if dropped:
        rows.append(("blocks removed", f"{len(dropped)}, each replaced by the identity: "
                                       + ", ".join(f"`{name}`" for name in dropped)))
    if card.get("trial") is None:
        title, chosen = card["network"], "Not a trial of the run: a network cut from its base by other means."
        load = ("`model.onnx` needs nothing else; `model.pt` is the state_dict of a network built outside the run's "
                "space.")
    else:
        title, chosen = f"trial #{card['trial']}", f"Chosen by `{card['chosen_by']}`."
        load = ("Load the PyTorch model: `search.export.trial.rebuild(DIR)` (the recipe's space builds "
                "`candidate.json`, then `model.pt`, a state_dict, is loaded into it; the recipe's data and, for a "
                "compression study, its base checkpoint must be where the recipe says). `model.onnx` needs nothing "
                "else.")
    when = "after the fine-tune" if fine_tuned else "again at export"
    lines = [
        f"# {card['study']}, {title}",
        "",
        f"{chosen} Architecture: `{card['description'] or json.dumps(card['candidate'])}`.",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        f"All numbers were measured {when}. Files: " + ", ".join(f"`{f}`" for f in card["files"]) + ".",
        "",
        load,
        "",
    ]
    return "\n".join(lines)


def write_card(card: dict[str, Any], out: Path) -> None:
    """Write card.json and card.md into the export directory."""
    (out / "card.json").write_text(json.dumps(card, indent=2))
    (out / "card.md").write_text(render_markdown(card))
