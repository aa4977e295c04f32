"""Progress of one long step of a study's start (a base network's training, a latency table's build): a bar on a
terminal, a line now and then in a log."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    """Progress of one long step (a base network's training, a latency table's build): a bar on a terminal (short
    enough for 80 columns: what, a 16-column bar, count, elapsed, ETA), and where output goes to a log, a line every `every_s` seconds and one at the end, so a log shows it is alive."""

    def __init__(self, description: str, unit: str, console: Console | None = None, every_s: float = 30.0) -> None:
        self.description, self.unit, self.every_s = description, unit, every_s
        self.console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                            TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
        self.task = self.bar.add_task(description, total=None)
        self.start = self.last = time.monotonic()

    def __enter__(self) -> "StepProgress":
        if self.console.is_terminal:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, done: float, total: float, message: str = "") -> None:
        """`done` of `total` units so far; `message` says what is being done."""
        if self.console.is_terminal:
            self.bar.update(self.task, completed=done, total=total, description=(message or self.description)[:30])
            return
        now = time.monotonic()
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        elapsed = now - self.start
        eta = f", about {elapsed * (total - done) / done:.0f} s left" if 0 < done < total else ""
        what = f": {message}" if message else ""
        self.console.print(f"{self.description}: {done:g}/{total:g} {self.unit} ({100 * done / max(total, 1e-9):.0f}%) "
                           f"in {elapsed:.0f} s{eta}{what}", highlight=False)
