"""Locks: one per machine that keeps latency measurements quiet while trials run in parallel, and lock files
for what the processes of one study must do once.

Timing a model while another process fine-tunes on the same cores measures the contention, not the
model. So on one machine a latency measurement holds the lock alone (no other measurement and no
fine-tune of any slimsearch trial runs meanwhile) while fine-tunes share it. A second lock file is a
turnstile: a measurement waiting for the machine keeps new fine-tunes from starting, so it is not
starved by workers that keep training. Locks are `fcntl.flock` on files in the system temp directory,
keyed by host name, so processes of different studies on one machine see the same lock and a process
that dies releases what it held. A measurement writes its process id and command line next to the lock, so a
process that has waited more than a moment says, in one line, whose measurement it waits for (once a minute at
most, however many of its trials wait).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    import optuna

QUIET_WAIT_S = 2.0  # a wait shorter than this (another trial's fine-tune step, a short measurement) goes unsaid
REMIND_S = 60.0  # a process says it waits at most once a minute, however many waits (one per trial) there are
SHOWN_COMMAND = 30  # characters of the holder's command line in the one-line wait message


@contextmanager
def flock(path: Path, mode: int = fcntl.LOCK_EX, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """`fcntl.flock` on the file at `path` (created if missing) for the block; a dead process releases it.
    `waiting` is called each `QUIET_WAIT_S` the lock is still taken, the first time after that long."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        if waiting is None:
            fcntl.flock(fd, mode)
        else:
            while not _try_for(fd, mode, QUIET_WAIT_S):
                waiting()
        yield
    finally:
        os.close(fd)


def _try_for(fd: int, mode: int, seconds: float) -> bool:
    """Try to take the lock without blocking for up to `seconds`; whether it was taken."""
    end = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)


def command_line() -> str:
    """This process's command line as its user typed it (`slimsearch lut build ...` for the CLI)."""
    if sys.argv and sys.argv[0].endswith(("slimsearch", "search/cli.py")):
        return " ".join(["slimsearch", *sys.argv[1:]])
    return " ".join(sys.argv) or "python"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def say_stderr(message: str) -> None:
    """Print one line on stderr (above a live progress bar, which redirects it)."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock file, held for the block, for what the processes of one study must do once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with flock(path):
        yield


class MachineLock:
    """Exclusive for latency measurements, shared for fine-tunes, across all processes of this machine."""

    def __init__(
        self, directory: str | Path | None = None, host: str | None = None, say: Callable[[str], None] = say_stderr,
    ) -> None:
        folder = Path(directory or tempfile.gettempdir())
        host = host or socket.gethostname()
        self.path = folder / f"slimsearch-{host}.latency.lock"
        self.gate = folder / f"slimsearch-{host}.gate.lock"
        self.holder = folder / f"slimsearch-{host}.latency.holder"
        self.say = say
        self.said_at: float | None = None

    def holder_text(self) -> str:
        """Who holds the lock for a measurement: `PID 123 (slimsearch lut build ...)`, its command cut to
        `SHOWN_COMMAND` characters, or what else holds it."""
        try:
            pid_text, _, command = self.holder.read_text().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return "fine-tunes of other slimsearch processes"
        if pid == os.getpid() or not _alive(pid):
            return "fine-tunes of other slimsearch processes"
        command = command.strip()
        shown = command if len(command) <= SHOWN_COMMAND else command[: SHOWN_COMMAND - 1] + "…"
        return f"PID {pid} ({shown})"

    def _waiting(self) -> None:
        """Say, in one short line, whose lock this process waits for: once, then at most every `REMIND_S`."""
        now = time.monotonic()
        if self.said_at is None or now - self.said_at >= REMIND_S:
            self.said_at = now
            self.say(f"waiting for the latency lock held by {self.holder_text()}")

    @contextmanager
    def measuring(self) -> Iterator[float]:
        """Hold the machine alone while timing a model; yields the seconds spent waiting for it. The holder file
        names this process meanwhile."""
        start = time.perf_counter()
        with flock(self.gate, fcntl.LOCK_EX, self._waiting), flock(self.path, fcntl.LOCK_EX, self._waiting):
            mine = f"{os.getpid()} {command_line()}"
            try:
                self.holder.write_text(mine)
            except OSError:
                pass  # the name is a courtesy to waiting processes, not part of the lock
            try:
                yield time.perf_counter() - start
            finally:
                try:
                    if self.holder.read_text() == mine:
                        self.holder.unlink()
                except OSError:
                    pass

    @contextmanager
    def training(self) -> Iterator[float]:
        """Share the machine with other fine-tunes, never with a measurement; yields the seconds waited."""
        start = time.perf_counter()
        with flock(self.gate, fcntl.LOCK_EX, self._waiting):
            pass
        with flock(self.path, fcntl.LOCK_SH, self._waiting):
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
