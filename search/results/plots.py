"""The pictures of a study: its front as pareto.png (matplotlib) and pareto.html (plotly), drawn from one list of
point groups — trials (by the rung they reached, in a multi-fidelity study), provisional ones, infeasible ones,
the base network and the front; and a compression study's BatchNorm scales before and after sparsity training
(gamma.png)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SMALL = 1e-2  # |γ| below this counts as switched off: in the sparsity summaries, the report and gamma.png
RUNG_COLOURS = ("#b8c4cf", "#7fa7c9", "#3f7cac", "#1d4e89", "#0b2545")


@dataclass
class Group:
    """Points drawn alike: their rows, legend label, colour and marker (`o`, `x`, or `hollow`)."""

    rows: pd.DataFrame
    label: str
    colour: str
    marker: str = "o"


def groups(df: pd.DataFrame) -> list[Group]:
    """The trials that have a score, grouped for the plots."""
    scored = df[df["accuracy"].notna() & df["latency_ms"].notna() & (df["state"] != "RUNNING")]
    infeasible = scored["feasible"].map(lambda v: v is False)
    ok, out = scored[~infeasible], []
    if df["top_rung"].notna().any():
        top = int(df["top_rung"].max())
        for rung in range(top + 1):
            rows = ok[(ok["rung"] == rung) & ~ok["provisional"]]
            label = f"top rung {rung}" if rung == top else f"stopped at rung {rung}"
            out.append(Group(rows, label, RUNG_COLOURS[min(rung, len(RUNG_COLOURS) - 1)]))
        running = df[df["provisional"] & (df["state"] == "RUNNING")]
        tentative = pd.concat([ok[ok["provisional"]], running])
        out.append(Group(tentative, "provisional (below the top rung, not final)", "#2e4057", "hollow"))
    else:
        out.append(Group(ok, "trials", "#9aa5b1"))
    out.append(Group(scored[infeasible], "infeasible (constraints)", "#e08a3c", "x"))
    return [g for g in out if len(g.rows)]


def plot_png(df: pd.DataFrame, fr: pd.DataFrame, path: Path, title: str, base: dict[str, Any] | None) -> None:
    """pareto.png: every scored trial, the front as a step line, the base as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for g in groups(df):
        style = {"facecolors": "none", "edgecolors": g.colour} if g.marker == "hollow" else {"c": g.colour}
        ax.scatter(g.rows["latency_ms"], g.rows["accuracy"], s=22, marker="x" if g.marker == "x" else "o",
                   label=g.label, **style)
    if base:
        ax.scatter([base["latency_ms"]], [base["accuracy"]], s=120, c="#2e4057", marker="*", label="base", zorder=4)
    if len(fr):
        ax.step(fr["latency_ms"], fr["accuracy"], where="post", c="#d1495b", lw=1.2)
        ax.scatter(fr["latency_ms"], fr["accuracy"], s=36, c="#d1495b", label="Pareto front", zorder=3)
        for _, r in fr.iterrows():
            ax.annotate(f"#{int(r['trial'])}", (r["latency_ms"], r["accuracy"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
    backends = df.loc[df["backend"] != "", "backend"]
    ax.set_xlabel(f"latency, median ms ({backends.iloc[0] if len(backends) else ''})")
    ax.set_ylabel("accuracy (validation)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_html(df: pd.DataFrame, fr: pd.DataFrame, path: Path, title: str, base: dict[str, Any] | None) -> None:
    """pareto.html: the same points, interactive, with each trial's candidate on hover."""
    import plotly.graph_objects as go

    hover = "trial %{customdata[0]}<br>acc %{y:.4f}<br>%{x:.4f} ms<br>%{customdata[1]}<extra></extra>"
    fig = go.Figure()
    for g in groups(df):
        symbol = {"x": "x", "hollow": "circle-open"}.get(g.marker, "circle")
        fig.add_trace(go.Scatter(x=g.rows["latency_ms"], y=g.rows["accuracy"], mode="markers", name=g.label,
                                 marker={"color": g.colour, "symbol": symbol}, customdata=g.rows[["trial", "candidate"]],
                                 hovertemplate=hover))
    fig.add_trace(go.Scatter(x=fr["latency_ms"], y=fr["accuracy"], mode="lines+markers", name="Pareto front",
                             line={"shape": "hv", "color": "#d1495b"}, customdata=fr[["trial", "candidate"]],
                             hovertemplate=hover))
    if base:
        fig.add_trace(go.Scatter(x=[base["latency_ms"]], y=[base["accuracy"]], mode="markers", name="base",
                                 marker={"color": "#2e4057", "symbol": "star", "size": 14},
                                 hovertemplate="base<br>acc %{y:.4f}<br>%{x:.4f} ms<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="latency, median ms", yaxis_title="accuracy (validation)")
    fig.write_html(path, include_plotlyjs=True)


def plot_gamma(before: np.ndarray, after: dict[float, np.ndarray], path: Path, title: str, small: float) -> None:
    """gamma.png: histograms of |γ| on a log scale, before sparsity training and after it at each λ (one panel per
    λ), the share below `small` in the legend and a line at `small`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = small / 100  # a |γ| of exactly 0 is drawn at the left edge
    every = np.concatenate([before, *after.values()])
    bins = np.logspace(np.log10(floor), np.log10(max(float(every.max(initial=1.0)), small) * 1.5), 60)
    fig, axes = plt.subplots(1, len(after), figsize=(4.2 * len(after), 3.4), dpi=120, squeeze=False, sharey=True)
    for ax, (l1, scales) in zip(axes[0], after.items()):
        for values, label, colour in ((before, "before", "#9aa5b1"), (scales, f"after, λ={l1:g}", "#d1495b")):
            share = float((values < small).mean()) if len(values) else 0.0
            ax.hist(np.clip(values, floor, None), bins=bins, histtype="stepfilled" if label == "before" else "step",
                    color=colour, alpha=0.6 if label == "before" else 1.0, lw=1.4,
                    label=f"{label}: {share:.0%} below {small:g}")
        ax.axvline(small, color="#2e4057", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("|γ| (BatchNorm scale)")
        ax.set_title(f"λ = {l1:g}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("channels")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
