"""Whether other work holds this machine's cores while latencies are measured: the CPU time other processes
took (from `/proc/stat`, less this process's own), the time the hypervisor stole, and the load average.

A latency table measured while another job ran describes that job as much as the network. The monitor answers
"how busy were the cores while I measured" for an interval, so a build can wait for quiet, and a table measured
under load is marked with the cause instead of being kept as clean.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

OTHERS_LIMIT = 0.25  # cores' worth of other processes' CPU time above which the machine counts as busy
STEAL_LIMIT = 0.05  # share of CPU time stolen by the hypervisor above which it counts as busy


def _cpu_jiffies() -> tuple[float, float, float] | None:
    """(busy, steal, total) jiffies of all CPUs since boot; None where /proc/stat cannot be read."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [float(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    steal = values[7] if len(values) > 7 else 0.0
    total = sum(values[:8])
    return total - idle - steal, steal, total


def _own_jiffies() -> float:
    """CPU time of this process (every thread; user + system), in jiffies."""
    times = os.times()
    return (times.user + times.system) * os.sysconf("SC_CLK_TCK")


@dataclass
class LoadSample:
    """How busy the machine was over an interval: other processes' CPU use in cores, the share of CPU time
    stolen, the 1-minute load average at its end, and the interval's length."""

    others_cores: float
    steal_share: float
    loadavg: float
    seconds: float

    def busy(self) -> str | None:
        """Why the interval counts as busy (other processes, stolen time), or None where it was quiet."""
        reasons = []
        if self.others_cores > OTHERS_LIMIT:
            reasons.append(f"other processes used {self.others_cores:.2f} cores")
        if self.steal_share > STEAL_LIMIT:
            reasons.append(f"the hypervisor stole {100 * self.steal_share:.0f}% of CPU time")
        return "; ".join(reasons) or None

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


class LoadMonitor:
    """Measures the machine's load since it was created or last `mark`ed."""

    def __init__(self) -> None:
        self.mark()

    def mark(self) -> None:
        """Start a new interval."""
        self._t = time.monotonic()
        self._cpu = _cpu_jiffies()
        self._own = _own_jiffies()

    def sample(self) -> LoadSample:
        """The load over the interval since the last mark (zeros where /proc/stat is not available)."""
        now, cpu, own = time.monotonic(), _cpu_jiffies(), _own_jiffies()
        seconds = now - self._t
        loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if cpu is None or self._cpu is None or cpu[2] <= self._cpu[2]:
            return LoadSample(0.0, 0.0, loadavg, seconds)
        busy, steal, total = (a - b for a, b in zip(cpu, self._cpu))
        cores = os.cpu_count() or 1
        others = max(0.0, busy - (own - self._own)) / total * cores
        return LoadSample(others, steal / total, loadavg, seconds)


def wait_for_quiet(max_wait_s: float, probe_s: float = 2.0, say=print) -> LoadSample:
    """Probe the machine for `probe_s` at a time until one probe is quiet or `max_wait_s` has passed; returns
    the last probe (its `busy()` says why, where the machine never went quiet)."""
    deadline = time.monotonic() + max_wait_s
    monitor = LoadMonitor()
    time.sleep(probe_s)
    sample = monitor.sample()
    told = False
    while sample.busy() and time.monotonic() < deadline:
        if not told:
            say(f"waiting for a quiet machine before measuring: {sample.busy()} (up to {max_wait_s:.0f} s)")
            told = True
        monitor.mark()
        time.sleep(probe_s)
        sample = monitor.sample()
    return sample
