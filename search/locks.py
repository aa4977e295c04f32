"""Locks: one per machine that keeps latency measurements quiet while trials run in parallel, and lock files
for what the processes of one study must do once.

Timing a model while another process fine-tunes on the same cores measures the contention, not the
model. So on one machine a latency measurement holds the lock alone (no other measurement and no
fine-tune of any slimsearch trial runs meanwhile) while fine-tunes share it. A second lock file is a
turnstile: a measurement waiting for the machine keeps new fine-tunes from starting, so it is not
starved by workers that keep training. Locks are `fcntl.flock` on files in the system temp directory,
keyed by host name, so processes of different studies on one machine see the same lock and a process
that dies releases what it held.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna


@contextmanager
def flock(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    """`fcntl.flock` on the file at `path` (created if missing) for the block; a dead process releases it."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock file, held for the block, for what the processes of one study must do once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with flock(path):
        yield


class MachineLock:
    """Exclusive for latency measurements, shared for fine-tunes, across all processes of this machine."""

    def __init__(self, directory: str | Path | None = None, host: str | None = None) -> None:
        folder = Path(directory or tempfile.gettempdir())
        host = host or socket.gethostname()
        self.path = folder / f"slimsearch-{host}.latency.lock"
        self.gate = folder / f"slimsearch-{host}.gate.lock"

    @contextmanager
    def measuring(self) -> Iterator[float]:
        """Hold the machine alone while timing a model; yields the seconds spent waiting for it."""
        start = time.perf_counter()
        with flock(self.gate, fcntl.LOCK_EX), flock(self.path, fcntl.LOCK_EX):
            yield time.perf_counter() - start

    @contextmanager
    def training(self) -> Iterator[float]:
        """Share the machine with other fine-tunes, never with a measurement; yields the seconds waited."""
        start = time.perf_counter()
        with flock(self.gate, fcntl.LOCK_EX):
            pass
        with flock(self.path, fcntl.LOCK_SH):
            yield time.perf_counter() - start

    def describe(self) -> dict[str, str]:
        """How latencies are protected, as recorded on a study."""
        return {
            "lock": str(self.path),
            "scope": "machine",
            "rule": "a latency measurement runs alone on its machine: no other measurement, no fine-tune",
        }


def record_protocol(study: optuna.Study, executor: str, workers: int, **details: object) -> None:
    """Write on the study how its latencies were taken: the lock, the executor, how many trials ran at once."""
    protocol = {**MachineLock().describe(), "executor": executor, "workers": workers, **details}
    study.set_user_attr("latency_protocol", protocol)
