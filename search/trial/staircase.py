"""The latency staircase of a compression study's base, on the study's own engine.

Latency is a staircase in the channel count: an engine runs a conv fastest at widths its kernels are blocked for,
and a width between two blocks runs no faster than the next wider one (ONNX Runtime's NCHWc kernels block by 8
or 16 channels on x86, TensorRT's tactics by 8 or 32). The staircase of a group is the network's predicted latency
as that group's width steps through every width it can take, the others kept whole; a width is offered to the
sampler only where it runs faster than every wider one (the lower edge of a step), so no trial is spent on a
narrower network that is not faster.

Predictions come from a per-layer latency table (`search.trial.lut`: every conv / linear layer at every pair of widths
the policy can give it, measured alone, with a correction fitted on whole networks). `latency.table: auto` builds
the table once per machine and engine: it is kept in the run directory and in a machine-level cache keyed by
everything that changes its numbers, so a second study of the same base on the same machine reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from evaluators.latency import LatencyBackend
from evaluators.latency.table import LatencyTable
from search.errors import UsageError
from search.recipe.config import StudyConfig
from search.trial.locks import locked
from search.trial.lut import build_table, load_table
from search.trial.steps import StepProgress
from spaces import Space
from spaces.compress.units import policy_units

TABLE_FILE = "latency_table.json"
STAIRCASE_PNG = "staircase.png"
TOLERANCE = 0.02  # a width is offered when it saves more than this share of its group's latency span
Stairs = dict[str, list[tuple[int, float]]]


def cache_dir() -> Path:
    """The machine-level cache of latency tables: `$SLIMSEARCH_CACHE/latency`, else `~/.cache/slimsearch/latency`."""
    root = os.environ.get("SLIMSEARCH_CACHE") or Path.home() / ".cache" / "slimsearch"
    return Path(root) / "latency"


def cache_key(config: StudyConfig, space: Space, backend: LatencyBackend) -> dict[str, object]:
    """Everything that changes a table's numbers: the base's weights fingerprint, what the policies can give each
    layer, the input shape, the engine (name, version, device, threads), precision and batch size."""
    lat, spec = config.latency, config.space.model_dump(mode="json")
    return {
        "space": spec.get("type"), "base": getattr(space, "base_spec", {}).get("sha256"),
        "model": spec.get("base", {}).get("model"), "kwargs": spec.get("base", {}).get("kwargs"),
        "keep": spec.get("keep"), "keep_step": spec.get("keep_step"), "round_to": spec.get("round_to"),
        "exclude": spec.get("exclude"), "input": [space.in_channels if hasattr(space, "in_channels") else None,
                                                  config.data.image_size, config.data.dataset],
        "backend": backend.name, "version": backend.version(), "device": backend.device(),
        "threads": getattr(backend, "threads", None), "precision": lat.precision, "batch_size": lat.batch_size,
    }


def cache_path(key: dict[str, object]) -> Path:
    """Where the machine-level cache keeps the table of `key`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['space']}-{digest}.json"


def keep_in_cache(config: StudyConfig, space: Space, backend: LatencyBackend, table: LatencyTable) -> Path:
    """Save `table` in the machine cache, where every study of the same base, engine and device finds it."""
    key = cache_key(config, space, backend)
    table.meta["cache_key"] = key
    path = cache_path(key)
    table.save(path)
    return path


def study_table(
    config: StudyConfig, space: Space, backend: LatencyBackend, say: Callable[[str], None] = print,
) -> LatencyTable | None:
    """The study's latency table: none without `latency.table`; the named file, checked against this engine; or,
    for `auto`, the run directory's, else the machine cache's, else one built now (and kept in both)."""
    lat = config.latency
    if lat.table is None:
        return None
    if lat.table != "auto":
        return load_table(lat.table, backend, lat.precision, lat.batch_size)
    if not space.lists_units:
        raise UsageError(f"latency.table: auto needs a space that lists its units; the {space.name!r} space does not")
    run_file = config.run_dir / TABLE_FILE
    with locked(config.run_dir / "table.lock"):
        if run_file.is_file():
            return load_table(run_file, backend, lat.precision, lat.batch_size)
        key = cache_key(config, space, backend)
        cached = cache_path(key)
        if cached.is_file():
            say(f"latency table: reusing {cached} (same base, engine, device, precision and batch)")
        else:
            say(f"latency table: measuring the units of {config.name} on {backend.name} ({backend.device()}); "
                "once per machine and engine")
            with StepProgress(f"latency table of {config.name}", "measurements") as step:
                report = build_table(config, space, backend, networks=16, seed=config.seed, progress=step)
            cached = keep_in_cache(config, space, backend, report.table)
            say(f"latency table: {report.measured} units and {report.table.correction.networks} networks in "
                f"{report.seconds:.0f} s, kept in {cached}")
        shutil.copyfile(cached, run_file)
        return load_table(run_file, backend, lat.precision, lat.batch_size)


class TablePredictor:
    """A network's predicted latency (ms) from its units; a unit missing from the table is a UsageError. A class,
    not a closure, so a space that predicts with it can be pickled (the Ray driver ships it to its workers)."""

    def __init__(self, table: LatencyTable) -> None:
        self.table = table

    def __call__(self, units: list[dict]) -> float:
        p = self.table.predict(units)
        if p.ms is None:
            raise UsageError(f"the latency table has no entry for {p.missing[0]} (and {len(p.missing) - 1} more); "
                             "rebuild it with `slimsearch lut build`")
        return p.ms


def staircase(space: Space, table: LatencyTable) -> Stairs:
    """Group → (width, predicted network latency) at every width the group can take, the other groups whole."""
    predict = TablePredictor(table)
    choices = space.width_choices()
    full = {g: ws[-1] for g, ws in choices.items()}
    return {g: [(w, predict(policy_units(space.layers, {**full, g: w}))) for w in ws] for g, ws in choices.items()}


def lower_edges(stairs: Stairs, tolerance: float = TOLERANCE) -> dict[str, list[int]]:
    """Group → the widths that run faster than every wider width by more than `tolerance` of the group's latency
    span (the full width always stays), ascending."""
    out = {}
    for group, points in stairs.items():
        lat = [ms for _, ms in points]
        margin = tolerance * (max(lat) - min(lat))
        keep, fastest_wider = [], float("inf")
        for width, ms in reversed(points):
            if ms < fastest_wider - margin or not keep:
                keep.append(width)
            fastest_wider = min(fastest_wider, ms)
        out[group] = sorted(keep)
    return out


def attach(space: Space, table: LatencyTable) -> Stairs:
    """Give a compress space the table's staircase and predictor; returns the staircase."""
    stairs = staircase(space, table)
    space.use_staircase(lower_edges(stairs), TablePredictor(table))
    return stairs


def plot_staircase(stairs: Stairs, offered: dict[str, list[int]], path: Path, title: str,
                   measured: dict[str, list[tuple[int, float]]] | None = None) -> Path:
    """staircase.png: one panel per group, predicted network latency against the group's width (a step line),
    the offered widths marked, and measured points where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(6, len(stairs))
    rows = -(-len(stairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows), dpi=110, squeeze=False)
    for ax, (group, points) in zip(axes.flat, stairs.items()):
        w = [p[0] for p in points]
        ms = [p[1] for p in points]
        ax.step(w, ms, where="mid", color="#3f7cac", lw=1.2, label="predicted")
        edge = [(x, y) for x, y in points if x in offered.get(group, [])]
        ax.plot([x for x, _ in edge], [y for _, y in edge], "o", color="#d1495b", ms=3.5, label="offered")
        if measured and group in measured:
            ax.plot(*zip(*measured[group]), "x", color="#2e4057", ms=4, label="measured")
        ax.set_title(group, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(stairs):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("channels kept by the group", fontsize=8)
    fig.supylabel("network latency, ms", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
