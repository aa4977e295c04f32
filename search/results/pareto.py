"""The trials of a study as a table, the front marked (`search.results.front`), and its reports: pareto.csv, .png, .html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from search.results.front import front_of, provisional
from search.results.plots import plot_html, plot_png
from search.results.record import TrialRecord


def trials_frame(study: optuna.Study, describe: Callable[[dict[str, Any]], str] | None = None) -> pd.DataFrame:
    """One row per trial: state, objectives, cost, latency details, and whether it is on the front
    (`search.results.front`)."""
    trials = study.get_trials(deepcopy=False)
    on_front = {t.number for t in front_of(trials)}
    tentative = {t.number for t in provisional(trials)}
    rows = []
    for t in trials:
        r = TrialRecord.of(t)
        if t.state == TrialState.WAITING:  # not run yet: a retry carries the dead trial's record, not its own
            r = TrialRecord(candidate=r.candidate, anchor=r.anchor)
        lat, versus = r.latency or {}, r.vs_base or {}
        latest = r.rungs[-1]["accuracy"] if r.rungs else np.nan  # a running or stopped multi-fidelity candidate
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "accuracy": np.nan if r.screened else t.values[0] if t.values else latest,
                "latency_ms": t.values[1] if t.values else (r.latency_ms if r.rungs else np.nan),
                "p90_ms": lat.get("p90_ms", np.nan),
                "cv": lat.get("cv", np.nan),
                "macs": np.nan if r.macs is None else r.macs,
                "params": np.nan if r.params is None else r.params,
                "seconds": r.seconds.get("total", np.nan),
                "backend": lat.get("backend", ""),
                "candidate": describe(r.candidate) if (describe and r.candidate) else json.dumps(r.candidate),
                "error": r.error or "",
                "screened": bool(r.screened),
                "feasible": r.feasible,
                "speedup": versus.get("speedup", np.nan),
                "compression": versus.get("compression", np.nan),
                "front": t.number in on_front,
                "rung": np.nan if r.rung is None else r.rung,
                "top_rung": np.nan if r.top_rung is None else r.top_rung,
                "scored_rungs": len(r.rungs or []),
                "provisional": t.number in tentative,
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
    plot_png(df, fr, paths["png"], title, base)
    plot_html(df, fr, paths["html"], title, base)
    return paths
