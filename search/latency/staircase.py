"""The latency staircase of a compression study's base, on the study's own engine.

Latency is a staircase in the channel count: an engine runs a conv fastest at widths its kernels are blocked for,
and a width between two blocks runs no faster than the next wider one (ONNX Runtime's NCHWc kernels block by 8
or 16 channels on x86, padding a narrower width up to the block; TensorRT's tactics by 8 or 32). The staircase of a
group is the network's predicted latency as that group's width steps through every width it can take, the others
kept whole; a width is offered to the sampler only where it runs faster than every wider one (the lower edge of a
step), so no trial is spent on a narrower network that is not faster. Predictions come from the study's latency
table (`search.latency.tables`).
"""

from __future__ import annotations

from pathlib import Path

from evaluators.latency.table import LatencyTable
from search.latency.predictor import UnitsPredictor
from spaces import Space
from spaces.compress.units import policy_units

STAIRCASE_PNG = "staircase.png"
TOLERANCE = 0.02  # a width is offered when it saves more than this share of its group's latency span
Stairs = dict[str, list[tuple[int, float]]]


def staircase(space: Space, table: LatencyTable) -> Stairs:
    """Group → (width, predicted network latency in reference units) at every width the group can take, the other groups whole."""
    predict = UnitsPredictor(table)
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
    space.use_staircase(lower_edges(stairs), UnitsPredictor(table))
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
    fig.supylabel("network latency, reference units", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
