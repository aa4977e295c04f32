"""A process waiting for the machine's latency lock says whose measurement it waits for."""

from __future__ import annotations

import subprocess
import sys
import time

from search.trial.locks import MachineLock
from tests.conftest import ROOT

HOLD = """
import sys, time
from search.locks import MachineLock
with MachineLock(sys.argv[1]).measuring():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_measurement_waiting_for_another_names_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "3"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        said: list[str] = []
        start = time.monotonic()
        with MachineLock(tmp_path, say=said.append).measuring() as waited:
            pass
        assert waited > 2 and time.monotonic() - start < 30
        assert len(said) == 1 and said[0].startswith(f"waiting for the latency lock held by PID {holder.pid} (")
    finally:
        holder.wait(timeout=30)
    assert not (MachineLock(tmp_path).holder).exists()  # a released lock names nobody


def test_a_short_wait_goes_unsaid(tmp_path):
    said: list[str] = []
    with MachineLock(tmp_path, say=said.append).training():
        with MachineLock(tmp_path, say=said.append).training():
            pass
    assert said == []
