"""Terminal tables for `status` and `pareto`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from search.results.plots import SMALL


def _num(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _human(n: object) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


CANDIDATE_HEADER = "candidate / error"
DROP_FIRST = ("p90 ms", "s", "MACs", "params ÷", "state", "params", "speedup")  # at narrow widths, in this order
LAST_RESORT = ("rung", "feasible")  # left out only where the candidate has been narrowed to CANDIDATE_FLOOR too
CANDIDATE_MIN = 24  # the candidate column keeps at least this many characters a line
CANDIDATE_FLOOR = 12  # ... unless the columns that cannot go leave it less, down to this


def trials_table(df: pd.DataFrame, title: str, show_candidate: bool = True, width: int | None = None) -> Table:
    """A table of trials; Pareto-optimal rows are starred and bold; with constraints, a `feasible` column; in a
    compression study, speedup and parameter compression against the base. Within `width` columns (a terminal
    of 80, say) the less important columns are left out (`DROP_FIRST`), so the trial number stays whole and the
    candidate keeps `CANDIDATE_MIN` characters a line; where that is not enough (constraints and rungs besides),
    the candidate narrows to `CANDIDATE_FLOOR`, then `LAST_RESORT` columns go, so no line of an 80-column table is
    cut off."""
    columns, rows, styles = _trials_columns(df, show_candidate)
    drop: list[str] = []
    candidate = CANDIDATE_MIN
    for name in (*DROP_FIRST, *LAST_RESORT):
        if width is not None and show_candidate and name == LAST_RESORT[0]:
            spare = width - _needed_width(columns, rows, show_candidate, drop, 0)
            candidate = max(CANDIDATE_FLOOR, min(CANDIDATE_MIN, spare))
        if width is None or _needed_width(columns, rows, show_candidate, drop, candidate) <= width:
            break
        drop.append(name)
    kept = [i for i, (header, _) in enumerate(columns) if header not in drop]
    table = Table(title=title, title_justify="left")
    for i in kept:
        header, kw = columns[i]
        table.add_column(header, **(kw if header != CANDIDATE_HEADER else {**kw, "min_width": candidate}))
    for row, style in zip(rows, styles):
        table.add_row(*(row[i] for i in kept), style=style)
    return table


def _needed_width(columns: list[tuple[str, dict[str, Any]]], rows: list[list[str]], show_candidate: bool,
                  drop: list[str], candidate: int) -> int:
    """Characters a line needs with the `drop` columns left out: each column its widest cell (the candidate
    `candidate`), plus 3 for its border and padding."""
    out = 1
    for i, (header, _) in enumerate(columns):
        if header in drop:
            continue
        last = show_candidate and i == len(columns) - 1
        out += 3 + (candidate if last else max([len(header), *(len(r[i]) for r in rows)]))
    return out


def _trials_columns(
    df: pd.DataFrame, show_candidate: bool
) -> tuple[list[tuple[str, dict[str, Any]]], list[list[str]], list[str | None]]:
    """The trials table's columns (header, rich options), its rows as text, and each row's style."""
    right, centre = {"justify": "right", "no_wrap": True}, {"justify": "center", "no_wrap": True}
    constrained = "feasible" in df and df["feasible"].map(lambda v: v is not None).any()
    columns: list[tuple[str, dict[str, Any]]] = [
        ("#", right), ("state", {"no_wrap": True}), ("front", centre), ("accuracy", right), ("latency ms", right),
        ("p90 ms", right), ("MACs", right), ("params", right), ("s", right),
    ]
    if constrained:
        columns.append(("feasible", centre))
    rungs = "top_rung" in df and df["top_rung"].notna().any()
    if rungs:
        columns.append(("rung", centre))
    versus = "speedup" in df and df["speedup"].notna().any()
    if versus:
        columns += [("speedup", right), ("params ÷", right)]
    if show_candidate:
        columns.append((CANDIDATE_HEADER, {"overflow": "fold", "min_width": CANDIDATE_MIN}))
    rows, styles = [], []
    for _, r in df.iterrows():
        on_front = bool(r.get("front", False))
        row = [
            str(r["trial"]), "screened" if r.get("screened") else r["state"].lower(), "★" if on_front else "",
            _num(r["accuracy"], ".4f"), _num(r["latency_ms"], ".4f"), _num(r["p90_ms"], ".4f"),
            _human(r["macs"]), _human(r["params"]), _num(r["seconds"], ".1f"),
        ]
        if constrained:
            row.append({True: "yes", False: "[red]no[/]"}.get(r["feasible"], ""))
        if rungs:
            row.append("-" if pd.isna(r["rung"]) else f"{int(r['rung'])}/{int(r['top_rung'])}")
        if versus:
            row += [f"{r[k]:{fmt}}×" if pd.notna(r[k]) else "-" for k, fmt in (("speedup", ".2f"), ("compression", ".1f"))]
        if show_candidate:
            row.append(r["error"] or r["candidate"])
        rows.append(row)
        styles.append("bold" if on_front else None)
    return columns, rows, styles


def rung_summary(df: pd.DataFrame, rungs: list[float]) -> str:
    """Multi-fidelity: how many candidates were scored at each rung (and how many are training towards one)."""
    parts = []
    for i, epochs in enumerate(rungs):
        scored = int((df["scored_rungs"] > i).sum())
        training = int(((df["state"] == "RUNNING") & (df["rung"] == i) & (df["scored_rungs"] == i)).sum())
        label = f"rung {i} ({epochs:g} ep{', top' if i == len(rungs) - 1 else ''}): {scored}"
        parts.append(label + (f" (+{training} training)" if training else ""))
    return "candidates scored per rung — " + ", ".join(parts)


def print_sparsity(console: Console, record: dict[str, Any] | None, run_dir: Path) -> None:
    """A compression study's sparsity training (its `sparsity` attribute; nothing without one): the |γ| median and
    share below `SMALL` before, and after at each λ with the sparsity-trained base's accuracy; the histogram."""
    if record:
        console.print("\n".join([*_sparsity_lines(record), f"  histogram: {run_dir / record['plot']}"]),
                      highlight=False)


def _sparsity_lines(record: dict[str, Any]) -> list[str]:
    small = f"below_{SMALL:g}"
    before = record["before"]
    lines = [f"sparsity training: {record['epochs']:g} epoch(s) at lr {record['lr']:g}, L1 on BatchNorm scales; "
             f"|γ| before: median {before['p50']:.3g}, {before[small]:.0%} below {SMALL:g}"]
    for l1, after in record["after"].items():
        lines.append(f"  λ={l1}: |γ| median {after['p50']:.3g}, {after[small]:.0%} below {SMALL:g}; "
                     f"accuracy {after['accuracy']:.4f} ({after['checkpoint']})")
    return lines


def print_summary(console: Console, df: pd.DataFrame, hv: float, ref: float, rungs: list[float] | None = None) -> None:
    """Counts by state (and by rung), and the front's hypervolume."""
    counts = df["state"].value_counts().to_dict() if len(df) else {}
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    n_front = int(df["front"].sum()) if len(df) else 0
    infeasible = int(df["feasible"].map(lambda v: v is False).sum()) if "feasible" in df else 0
    if infeasible:
        states += f"; {infeasible} infeasible"
    console.print(f"{len(df)} trials ({states or 'none'}); front: {n_front} trials; "
                  f"hypervolume {hv:.4f} (reference: accuracy 0, latency {ref:.4f} ms)", highlight=False)
    if rungs:
        console.print(rung_summary(df, rungs), highlight=False)
        tentative = df.loc[df["provisional"], "trial"].tolist()
        if tentative:
            console.print("provisional (below the top rung, not dominated by the front; not final): "
                          + ", ".join(f"#{n}" for n in tentative), highlight=False)
