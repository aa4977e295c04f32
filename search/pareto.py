"""The accuracy / latency Pareto front of a study: table, hypervolume and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState


def trials_frame(study: optuna.Study, describe: Any = None) -> pd.DataFrame:
    """One row per trial: state, objectives, cost, latency details, and whether it is on the front."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        lat = t.user_attrs.get("latency", {})
        candidate = t.user_attrs.get("candidate")
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "accuracy": t.values[0] if t.values else np.nan,
                "latency_ms": t.values[1] if t.values else np.nan,
                "p90_ms": lat.get("p90_ms", np.nan),
                "cv": lat.get("cv", np.nan),
                "macs": t.user_attrs.get("macs", np.nan),
                "params": t.user_attrs.get("params", np.nan),
                "seconds": t.user_attrs.get("seconds", {}).get("total", np.nan),
                "backend": lat.get("backend", ""),
                "candidate": describe(candidate) if (describe and candidate) else json.dumps(candidate),
                "error": t.user_attrs.get("error", ""),
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    done = df["state"] == TrialState.COMPLETE.name
    df["front"] = False
    df.loc[done, "front"] = pareto_mask(df.loc[done, "accuracy"].to_numpy(), df.loc[done, "latency_ms"].to_numpy())
    return df


def pareto_mask(accuracy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """True where no other point is at least as accurate and as fast, and strictly better in one."""
    acc = np.asarray(accuracy, dtype=float)
    lat = np.asarray(latency, dtype=float)
    mask = np.ones(len(acc), dtype=bool)
    for i in range(len(acc)):
        dominated = (acc >= acc[i]) & (lat <= lat[i]) & ((acc > acc[i]) | (lat < lat[i]))
        mask[i] = not dominated.any()
    return mask


def hypervolume(accuracy: np.ndarray, latency: np.ndarray, ref_latency: float, ref_accuracy: float = 0.0) -> float:
    """Area dominated by the points, bounded by (ref_accuracy, ref_latency): larger is better."""
    pts = [(lat, acc) for acc, lat in zip(accuracy, latency) if lat < ref_latency and acc > ref_accuracy]
    area, best_acc = 0.0, ref_accuracy
    for lat, acc in sorted(pts):
        if acc > best_acc:
            area += (ref_latency - lat) * (acc - best_acc)
            best_acc = acc
    return float(area)


def front(df: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal completed trials, fastest first."""
    if df.empty:
        return df
    return df[df["front"]].sort_values("latency_ms")


def default_reference(df: pd.DataFrame) -> float:
    """A reference latency 10% beyond the slowest completed trial (stable once the study is done)."""
    done = df[df["state"] == TrialState.COMPLETE.name]
    return float(done["latency_ms"].max() * 1.1) if len(done) else 1.0


def write_reports(df: pd.DataFrame, run_dir: str | Path, title: str) -> dict[str, Path]:
    """Write pareto.csv, pareto.png and pareto.html into the run directory."""
    run_dir = Path(run_dir)
    paths = {"csv": run_dir / "pareto.csv", "png": run_dir / "pareto.png", "html": run_dir / "pareto.html"}
    fr = front(df)
    fr.to_csv(paths["csv"], index=False)
    _plot_png(df, fr, paths["png"], title)
    _plot_html(df, fr, paths["html"], title)
    return paths


def _plot_png(df: pd.DataFrame, fr: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = df[df["state"] == TrialState.COMPLETE.name]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(done["latency_ms"], done["accuracy"], s=18, c="#9aa5b1", label="trials")
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


def _plot_html(df: pd.DataFrame, fr: pd.DataFrame, path: Path, title: str) -> None:
    import plotly.graph_objects as go

    done = df[df["state"] == TrialState.COMPLETE.name]
    hover = "trial %{customdata[0]}<br>acc %{y:.4f}<br>%{x:.4f} ms<br>%{customdata[1]}<extra></extra>"
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=done["latency_ms"], y=done["accuracy"], mode="markers", name="trials",
                             marker={"color": "#9aa5b1"}, customdata=done[["trial", "candidate"]], hovertemplate=hover))
    fig.add_trace(go.Scatter(x=fr["latency_ms"], y=fr["accuracy"], mode="lines+markers", name="Pareto front",
                             line={"shape": "hv", "color": "#d1495b"}, customdata=fr[["trial", "candidate"]],
                             hovertemplate=hover))
    fig.update_layout(title=title, xaxis_title="latency, median ms", yaxis_title="accuracy (validation)")
    fig.write_html(path, include_plotlyjs=True)
