"""The fine-tune's state in its output folder: one checkpoint, rewritten atomically after every epoch, holding what the
fine-tune is (the run, the network, the plan), the trainer's whole state (weights, optimizer, schedule, image order,
random states, step) and the accuracy after each epoch so far; and that history as a CSV beside it."""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.errors import UsageError

CHECKPOINT = "finetune-checkpoint.pt"
HISTORY = "finetune.csv"
PLOT = "finetune.png"
COLUMNS = ("epoch", "step", "loss", "validation", "test", "seconds", "session", "device")


@dataclass
class Saved:
    """A fine-tune as its checkpoint holds it. `history`: one row per scored point (epoch 0: the starting weights),
    `COLUMNS` each; `state`: `FineTune.state_dict()` after the last row (None before the first epoch);
    `start`: the starting weights' accuracies at the network's precision and what they were."""

    identity: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] | None = None
    start: dict[str, Any] = field(default_factory=dict)
    sessions: int = 0
    finished: bool = False

    @property
    def epochs_done(self) -> float:
        """Epochs trained so far (0 before the first checkpoint)."""
        return float(self.history[-1]["epoch"]) if self.history else 0.0


def read(out: Path) -> Saved | None:
    """The fine-tune checkpointed in `out`, or None where there is none; an unreadable one is a UsageError."""
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return Saved(**raw)
    except Exception as exc:  # torch.load raises many kinds for a damaged file; a foreign dict fails Saved(**raw)
        raise UsageError(f"{path}: not a readable fine-tune checkpoint ({type(exc).__name__}); remove it, or the "
                         "folder, to start the fine-tune over") from None


def save(out: Path, saved: Saved) -> None:
    """Write the checkpoint and the history CSV atomically: a kill at any moment leaves the last whole ones."""
    path = out / CHECKPOINT
    tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
    torch.save(asdict(saved), tmp)
    os.replace(tmp, path)
    table = out / HISTORY
    tmp = table.with_name(f".{HISTORY}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS} for row in saved.history)
    os.replace(tmp, table)


def remove_leftovers(out: Path) -> None:
    """Remove the temporary files of a write that was killed half-way."""
    for tmp in out.glob(".finetune*.tmp"):
        tmp.unlink(missing_ok=True)


def matching(out: Path, identity: dict[str, Any], force: bool) -> Saved | None:
    """The fine-tune in `out` to continue (None: start one). Refuses, before anything is written, a folder that holds
    another fine-tune — another run's, another network's, other arguments' — naming each difference, and a folder
    that holds other files and no fine-tune. `force` starts the same fine-tune over (the folder's files are replaced
    as it finishes)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file, not a folder; name a folder to write the fine-tune into")
    saved = read(out) if out.is_dir() else None
    if saved is None:
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if others:
            raise UsageError(f"--out {out}: holds {', '.join(others[:4])}{', …' if len(others) > 4 else ''} and no "
                             "fine-tune; name a new or empty folder (nothing was written)")
        return None
    changed = differences(saved.identity, identity)
    if changed:
        raise UsageError(f"--out {out}: holds another fine-tune — {changed}. Name another --out, or remove that folder "
                         "(nothing was written)")
    return None if force else saved


def differences(there: dict[str, Any], asked: dict[str, Any]) -> str:
    """How the fine-tune in a folder differs from the one asked for, in a line: another network (which one each is),
    else each argument that differs (`epochs: 3 there, 4 asked`); empty where they are the same."""
    if there["network"] != asked["network"]:
        return f"that of {_network(there['network'])}, not of {_network(asked['network'])}"
    return "; ".join(f"{key}: {_short(there['plan'].get(key))} there, {_short(asked['plan'].get(key))} asked"
                     for key in sorted(set(there["plan"]) | set(asked["plan"]))
                     if there["plan"].get(key) != asked["plan"].get(key))


def _network(who: dict[str, Any]) -> str:
    """A fine-tune's network in words: `trial #3 of study demo (begun 2026-01-02 10:00:00)`, or a named network."""
    if "trial" in who:
        return f"trial #{who['trial']} of study {who['study']} (begun {who['trial_started'][:19]})"
    return f"the network {who['network']!r} (weights {who['weights_sha256'][:12]}…) of study {who['study']}"


def _short(value: Any) -> str:
    """`value` as text, cut to 60 characters for a message."""
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"
