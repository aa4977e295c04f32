"""A process waiting for the machine's latency lock says whose measurement it waits for."""

from __future__ import annotations

import subprocess
import sys

from search.trial.locks import QUIET_WAIT_S, REMIND_S, MachineLock
from tests.conftest import ROOT

HOLD = """
import select, sys
from search.trial.locks import MachineLock
with MachineLock(sys.argv[1]).measuring():
    print("held", flush=True)
    select.select([sys.stdin], [], [], 120)  # until the test writes or closes stdin (or gives up)
"""


def test_a_measurement_waiting_for_another_names_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    said: list[str] = []

    def say(message: str) -> None:  # the waiter speaks up once; only then does the holder let go
        said.append(message)
        holder.stdin.write("release\n")
        holder.stdin.flush()

    try:
        assert holder.stdout.readline().strip() == "held"
        with MachineLock(tmp_path, say=say).measuring() as waited:
            pass
        assert len(said) == 1 and said[0].startswith(f"waiting for the latency lock held by PID {holder.pid} (")
        assert waited >= QUIET_WAIT_S  # it spoke only after trying quietly that long
    finally:
        holder.stdin.close()  # lets go of the lock, if nothing else did
        holder.wait(timeout=60)
    assert not (MachineLock(tmp_path).holder).exists()  # a released lock names nobody


def test_a_short_wait_goes_unsaid(tmp_path):
    said: list[str] = []
    with MachineLock(tmp_path, say=said.append).training():
        with MachineLock(tmp_path, say=said.append).training():
            pass
    assert said == []


def test_a_process_that_waits_again_and_again_says_so_once_a_minute(tmp_path):
    said: list[str] = []
    lock = MachineLock(tmp_path, say=said.append)
    for _ in range(5):  # five trials in a row find the machine taken
        lock._waiting()
    assert said == ["waiting for the latency lock held by fine-tunes of other slimsearch processes"]
    lock.said_at -= REMIND_S  # a minute later
    lock._waiting()
    assert len(said) == 2 and all(len(line) <= 80 for line in said)
