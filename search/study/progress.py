"""A rich progress bar for a running study: trial k of N, elapsed, ETA and the size of the front."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from search.results.front import FinishedTrial
from search.results.record import TrialRecord, evaluated


class StudyProgress:
    """After-trial listener that prints one line per finished trial and, with `bar`, advances a bar on each evaluated
    one (without it, as `--no-progress` asks, a log still shows each trial as it ends)."""

    def __init__(
        self, total: int, done: int, describe: Callable[[dict[str, Any]], str] | None = None,
        console: Console | None = None, bar: bool = True,
    ) -> None:
        self.console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
        self.describe = describe
        self.progress = Progress(
            TextColumn("[bold]trial"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("front: {task.fields[front]}"),
            console=self.console,
            transient=False,
            disable=not bar,
        )
        self.task = self.progress.add_task("search", total=total, completed=done, front=0)

    def __enter__(self) -> "StudyProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, finished: FinishedTrial) -> None:
        trial = finished.trial
        record = TrialRecord.of(trial)
        if evaluated(trial):
            what = self.describe(record.candidate) if self.describe and record.candidate else ""
            if record.screened:
                self.console.print(f"  #{trial.number:<4d} [yellow]screened[/]: {record.screened}  {what}",
                                   highlight=False)
            else:
                acc, lat = record.accuracy, record.latency_ms
                rung = "" if record.rung is None else f"rung {record.rung}/{record.top_rung}  "
                self.console.print(f"  #{trial.number:<4d} acc {acc:.4f}  {lat:8.4f} ms  {rung}{what}{off(record)}",
                                   highlight=False)
            # the study's own count, so trials of other processes on the same study move the bar too
            self.progress.update(self.task, completed=finished.evaluated, front=len(finished.front))
        else:
            reason = record.error or trial.state.name
            self.console.print(f"  #{trial.number:<4d} [yellow]{trial.state.name.lower()}[/]: {reason}", highlight=False)


def off(record: TrialRecord) -> str:
    """A warning where the engine's measured speed-up and the latency table's prediction are further apart than the
    table's threshold (the table no longer describes this machine), else nothing."""
    check = record.latency_check
    if not check or not check.get("over_threshold"):
        return ""
    return (f"  [bold yellow]measured {check['measured_speedup']:.2f}× vs predicted {check['predicted_speedup']:.2f}× "
            f"({check['error_percent']:+.0f}%): rebuild the latency table?[/]")
