"""Trial tables at 80 columns keep the trial number whole and the candidate readable."""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from search.results.report import trials_table

CANDIDATE = "stem16 | mbconv×2 w24 k3 e6 | shuffle×1 w48 g4 | fire×2 w64 sq0.25"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame([
        {"trial": i, "state": "COMPLETE", "front": i % 3 == 0, "accuracy": 0.9123, "latency_ms": 0.1234,
         "p90_ms": 0.1301, "macs": 1.2e6, "params": 4.5e4, "seconds": 12.3, "error": None, "candidate": CANDIDATE}
        for i in range(n)
    ])


def render(table, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


def test_at_80_columns_numbers_stay_whole_and_the_candidate_stays():
    text = render(trials_table(frame(12), "study t", width=80), 80)
    assert "…" not in text
    assert "│ 11 │" in text.replace("┃", "│")
    assert "stem16 | mbconv×2" in text.replace("\n", " ")
    assert "p90 ms" not in text  # the least important column went first
    assert all(len(line) <= 80 for line in text.splitlines())


def test_a_wide_terminal_keeps_every_column():
    text = render(trials_table(frame(3), "study t", width=200), 200)
    assert "p90 ms" in text and "MACs" in text and CANDIDATE in text


def test_constraints_rungs_and_speedups_at_80_columns_cut_no_line_off():
    df = frame(12).assign(trial=[100 + i for i in range(12)], feasible=[i % 2 == 0 for i in range(12)], rung=1,
                          top_rung=2, speedup=1.53, compression=2.1)
    text = render(trials_table(df, "study t", width=80), 80)
    assert all(len(line) <= 80 and line.rstrip()[-1] in "┓┃┩│┘" for line in text.splitlines()[1:]), text
    assert "feasible" in text and "rung" in text and "│ 111 │" in text.replace("┃", "│")
