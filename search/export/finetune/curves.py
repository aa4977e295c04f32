"""Accuracy per epoch drawn as curves: one fine-tune's validation and test accuracy beside its card, or several
networks' test accuracy side by side (the comparison benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Curve = tuple[list[float], list[float]]  # epochs, accuracies


def history_curves(history: list[dict[str, Any]]) -> dict[str, Curve]:
    """The validation and (where scored) test accuracy of a fine-tune's history rows, by epoch."""
    curves = {}
    for column, label in (("validation", "validation"), ("test", "test")):
        points = [(float(r["epoch"]), float(r[column])) for r in history if r.get(column) is not None]
        if points:
            curves[label] = ([e for e, _ in points], [a for _, a in points])
    return curves


def plot_curves(path: Path, title: str, curves: dict[str, Curve], ylabel: str = "accuracy") -> Path:
    """A PNG of accuracy against epochs, one line with markers per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for label, (epochs, values) in curves.items():
        ax.plot(epochs, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("epochs of fine-tuning")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
