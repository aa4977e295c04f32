"""Ctrl-C (SIGINT) and `kill` (SIGTERM) during a command: it stops at once, with one line and no traceback, and the
interrupt is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be; inside a garbage-collection callback (as
SQLAlchemy registers) it is printed as "Exception ignored" and lost, and a study would run on to its end. So the
handler also remembers the signal, the study checks for one after each trial (`raise_if_interrupted`), and the lost
one is not printed. Optuna logs the trial an interrupt ends as failed, with a traceback: that log is left out while
an interrupt is pending.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
OPTUNA_TRIAL_LOG = "optuna.study._optimize"  # the logger of Optuna's "Trial N failed ..." warnings
_pending: list[int] = []  # the signals received, in order


def _remember(signum: int, frame: FrameType | None) -> None:
    """The handler: remember the signal, and interrupt what runs now."""
    _pending.append(signum)
    raise KeyboardInterrupt


class _QuietWhileInterrupted(logging.Filter):
    """Leaves out log records once an interrupt is pending."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _pending


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise KeyboardInterrupt and are remembered (`received`), and Optuna's log
    of the trial they end is left out. A signal the parent process ignores (a job started with `nohup`, or in the
    background of a script) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending.clear()  # one command's interrupt is not the next one's (tests run several in one process)
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _remember)
    quiet = _QuietWhileInterrupted()
    logging.getLogger(OPTUNA_TRIAL_LOG).addFilter(quiet)
    unraisable = sys.unraisablehook
    sys.unraisablehook = _swallowed(unraisable)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        logging.getLogger(OPTUNA_TRIAL_LOG).removeFilter(quiet)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _swallowed(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """An unraisable hook that says nothing of a KeyboardInterrupt Python could not raise (in a garbage-collection
    callback, it would print "Exception ignored" and a traceback): the signal is remembered, and the study stops at
    `raise_if_interrupted`. Anything else goes to `previous`."""

    def hook(unraisable: Any) -> object:
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and _pending:
            return None
        return previous(unraisable)

    return hook


def received() -> int | None:
    """The first signal received within `interruptible` (None: none was)."""
    return _pending[0] if _pending else None


def raise_if_interrupted() -> None:
    """KeyboardInterrupt where a signal was received, even if the KeyboardInterrupt it raised was lost."""
    if _pending:
        raise KeyboardInterrupt
