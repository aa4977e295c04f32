"""The trials of a study as a table, the front marked (`search.front`), and its reports: pareto.csv, .png, .html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from search.front import front_numbers
from search.record import TrialRecord


def trials_frame(study: optuna.Study, describe: Callable[[dict[str, Any]], str] | None = None) -> pd.DataFrame:
    """One row per trial: state, objectives, cost, latency details, and whether it is on the front
    (`search.front`)."""
    on_front = front_numbers(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        r = TrialRecord.of(t)
        lat, versus = r.latency or {}, r.vs_base or {}
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "accuracy": t.values[0] if t.values else np.nan,
                "latency_ms": t.values[1] if t.values else np.nan,
                "p90_ms": lat.get("p90_ms", np.nan),
                "cv": lat.get("cv", np.nan),
                "macs": np.nan if r.macs is None else r.macs,
                "params": np.nan if r.params is None else r.params,
                "seconds": r.seconds.get("total", np.nan),
                "backend": lat.get("backend", ""),
                "candidate": describe(r.candidate) if (describe and r.candidate) else json.dumps(r.candidate),
                "error": r.error or "",
                "feasible": r.feasible,
                "speedup": versus.get("speedup", np.nan),
                "compression": versus.get("compression", np.nan),
                "front": t.number in on_front,
            }
        )
    return pd.DataFrame(rows)


def front(df: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal completed trials, fastest first."""
    if df.empty:
        return df
    return df[df["front"]].sort_values("latency_ms")


def default_reference(df: pd.DataFrame) -> float:
    """A reference latency 10% beyond the slowest completed trial (stable once the study is done)."""
    done = df[df["state"] == TrialState.COMPLETE.name]
    return float(done["latency_ms"].max() * 1.1) if len(done) else 1.0


def write_reports(
    df: pd.DataFrame, run_dir: str | Path, title: str, base: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write pareto.csv, pareto.png and pareto.html into the run directory; the plots mark infeasible
    trials and, when given, the base network (`accuracy`, `latency_ms`) the study compresses."""
    run_dir = Path(run_dir)
    paths = {"csv": run_dir / "pareto.csv", "png": run_dir / "pareto.png", "html": run_dir / "pareto.html"}
    fr = front(df)
    fr.to_csv(paths["csv"], index=False)
    base = base if base and {"accuracy", "latency_ms"} <= set(base) else None
    _plot_png(df, fr, paths["png"], title, base)
    _plot_html(df, fr, paths["html"], title, base)
    return paths


def _completed(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Completed trials split into (feasible, infeasible)."""
    done = df[df["state"] == TrialState.COMPLETE.name]
    bad = done["feasible"].map(lambda v: v is False)
    return done[~bad], done[bad]


def _plot_png(df: pd.DataFrame, fr: pd.DataFrame, path: Path, title: str, base: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done, infeasible = _completed(df)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(done["latency_ms"], done["accuracy"], s=18, c="#9aa5b1", label="trials")
    if len(infeasible):
        ax.scatter(infeasible["latency_ms"], infeasible["accuracy"], s=22, c="#e08a3c", marker="x",
                   label="infeasible (constraints)")
    if base:
        ax.scatter([base["latency_ms"]], [base["accuracy"]], s=120, c="#2e4057", marker="*", label="base", zorder=4)
    if len(fr):
        ax.step(fr["latency_ms"], fr["accuracy"], where="post", c="#d1495b", lw=1.2)
        ax.scatter(fr["latency_ms"], fr["accuracy"], s=36, c="#d1495b", label="Pareto front", zorder=3)
        for _, r in fr.iterrows():
            ax.annotate(f"#{int(r['trial'])}", (r["latency_ms"], r["accuracy"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
    backend = done["backend"].iloc[0] if len(done) else ""
    ax.set_xlabel(f"latency, median ms ({backend})")
    ax.set_ylabel("accuracy (validation)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_html(df: pd.DataFrame, fr: pd.DataFrame, path: Path, title: str, base: dict[str, Any] | None) -> None:
    import plotly.graph_objects as go

    done, infeasible = _completed(df)
    hover = "trial %{customdata[0]}<br>acc %{y:.4f}<br>%{x:.4f} ms<br>%{customdata[1]}<extra></extra>"
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=done["latency_ms"], y=done["accuracy"], mode="markers", name="trials",
                             marker={"color": "#9aa5b1"}, customdata=done[["trial", "candidate"]], hovertemplate=hover))
    fig.add_trace(go.Scatter(x=fr["latency_ms"], y=fr["accuracy"], mode="lines+markers", name="Pareto front",
                             line={"shape": "hv", "color": "#d1495b"}, customdata=fr[["trial", "candidate"]],
                             hovertemplate=hover))
    if len(infeasible):
        fig.add_trace(go.Scatter(x=infeasible["latency_ms"], y=infeasible["accuracy"], mode="markers",
                                 name="infeasible (constraints)", marker={"color": "#e08a3c", "symbol": "x"},
                                 customdata=infeasible[["trial", "candidate"]], hovertemplate=hover))
    if base:
        fig.add_trace(go.Scatter(x=[base["latency_ms"]], y=[base["accuracy"]], mode="markers", name="base",
                                 marker={"color": "#2e4057", "symbol": "star", "size": 14},
                                 hovertemplate="base<br>acc %{y:.4f}<br>%{x:.4f} ms<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="latency, median ms", yaxis_title="accuracy (validation)")
    fig.write_html(path, include_plotlyjs=True)
