"""Latency you can trust: units timed relative to a reference beside them (a drift of the machine cancels), real ONNX
Runtime sessions timed that way, other processes on the cores noticed, and a table measured under load marked so
that no study screens with it silently."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch.nn as nn
import yaml
from optuna.trial import TrialState

from evaluators.latency import get_backend
from evaluators.latency.engine_timer import EngineTimer
from evaluators.latency.machine_load import LoadMonitor
from evaluators.latency.relative import RelativeTimer
from evaluators.latency.table import LatencyTable
from search.cli import main
from search.recipe.config import load_config
from search.study.executors.inprocess import run_study
from tests.test_lut import write_recipe


def spin(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


class Machine:
    """Synthetic work whose wall time scales with `slowness`, as a shared machine's does when it drifts."""

    def __init__(self) -> None:
        self.slowness = 1.0

    def runner(self, us: float):
        return lambda: spin(us * self.slowness)


def test_a_ratio_to_the_reference_survives_the_machine_slowing_down():
    machine = Machine()
    timer = RelativeTimer(machine.runner(200), rounds=3, round_seconds=0.01, warmup=2)
    model = machine.runner(400)
    before = timer.measure(model)
    machine.slowness = 1.6  # the machine slowed down between two measurements of the same model
    after = timer.measure(model)
    assert after.ms > 1.3 * before.ms  # the milliseconds moved with the machine …
    assert after.ratio == pytest.approx(before.ratio, rel=0.2)  # … the ratio to the reference did not
    assert before.ratio == pytest.approx(2.0, rel=0.2) and before.rounds == 3


@pytest.fixture
def burner():
    """Another process holding one core for as long as the test runs."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    yield proc
    proc.kill()
    proc.wait()


def test_other_processes_on_the_cores_are_noticed(burner):
    monitor = LoadMonitor()
    time.sleep(1.5)
    sample = monitor.sample()
    assert sample.others_cores > 0.5 and sample.seconds >= 1.5
    assert "other processes used" in sample.busy()


def test_units_and_networks_are_timed_on_real_onnxruntime_sessions_against_a_reference():
    timer = EngineTimer(get_backend("onnxruntime", threads=1), "fp32", 1, rounds=3, network_rounds=3)
    conv = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
    first, second = timer.unit(conv, (16, 16, 16)), timer.unit(conv, (16, 16, 16))
    assert first.ratio > 0 and first.ms > 0 and first.reference_ms > 0 and first.rounds == 3
    assert second.ratio == pytest.approx(first.ratio, rel=0.5)  # one unit timed twice: the same ratio, roughly
    paired = timer.paired(conv, conv, (16, 16, 16))  # a network against itself, interleaved
    assert paired.speedup == pytest.approx(1.0, rel=0.4) and paired.spread >= 0 and 1 <= paired.tries <= 3
    assert timer.reference_ms() > 0


def test_a_table_measured_under_load_is_marked_and_screens_no_study(burner, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "busy.yaml", tmp_path, **{"latency.trust": "checked"})
    out = tmp_path / "busy.json"
    assert main(["lut", "build", str(recipe), "--out", str(out), "--networks", "2", "--holdout", "1",
                 "--wait", "1"]) == 0
    said = capsys.readouterr().out
    assert "still busy" in said and "this table is marked" in said and "--force" in said
    table = LatencyTable.load(out)
    assert "other processes used" in table.protocol["busy"] and not table.trusted
    raw = yaml.safe_load(recipe.read_text())
    raw["latency"].update(table=str(out), budget_ms=1e-6)
    recipe.write_text(yaml.safe_dump(raw))
    study = run_study(load_config(recipe), show_progress=False)
    assert "measured while the machine was busy" in capsys.readouterr().err
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done and all(not t.user_attrs.get("screened") and t.user_attrs["predicted_latency_ms"] > 1e-6
                        for t in done)  # predicted far over the budget, trained all the same: nothing screened
