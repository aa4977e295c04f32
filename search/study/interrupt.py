"""Ctrl-C (SIGINT) and `kill` (SIGTERM) during a command: it stops at once, with one line and no traceback, and the
interrupt is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be; inside a garbage-collection callback (as
SQLAlchemy registers) it is printed as "Exception ignored" and lost, and a study would run on to its end. So the
handler also remembers the signal, the study checks for one after each trial (`raise_if_interrupted`), and the lost
one is not printed. Optuna logs the trial an interrupt ends as failed, with a traceback: that log is left out while
an interrupt is pending. An interrupt can also strike where cleanup then hangs (a thread started and never told to
stop, a lock left taken): the command ends anyway, at once where only such a thread is left, else after
`STOP_WITHIN_S`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_WITHIN_S = 60  # seconds a command has to stop after a signal before the process is ended outright
OPTUNA_TRIAL_LOG = "optuna.study._optimize"  # the logger of Optuna's "Trial N failed ..." warnings
_pending: list[int] = []  # the signals received, in order


def _remember(signum: int, frame: FrameType | None) -> None:
    """The handler: remember the signal, and interrupt what runs now; the first one also sets an alarm that ends the
    process should unwinding hang (a lock the interrupt left taken)."""
    if not _pending:
        signal.signal(signal.SIGALRM, _give_up)
        signal.alarm(STOP_WITHIN_S)
    _pending.append(signum)
    raise KeyboardInterrupt


def _give_up(signum: int, frame: FrameType | None) -> None:
    """The alarm: the interrupted command did not stop within `STOP_WITHIN_S`; end the process now."""
    os.write(2, f"interrupted; still stopping after {STOP_WITHIN_S} s, so ending now — completed trials are "
                "saved\n".encode())
    os._exit(128 + (_pending[0] if _pending else signal.SIGINT))


def exit_code_after_interrupt() -> int:
    """128 + the signal received (130 for Ctrl-C, 143 for SIGTERM), once no thread the interrupted work started is
    left running: a thread it never stopped (Optuna's heartbeat thread, when the signal struck as a trial began)
    would keep the process alive for ever, so the process then ends here."""
    code = 128 + (received() or signal.SIGINT)
    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if lingering:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


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
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
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
