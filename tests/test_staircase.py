"""Hardware-aware compression: a pruned network's units read without building it, the latency staircase and its
offered widths, the latency-aware greedy policy, screening by predicted speed-up in a real study on ONNX Runtime,
the machine-level table cache, `lut build/check` for a compression recipe and `latency --compare`."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from optuna.trial import TrialState

from evaluators.to_onnx import export_onnx
from search.cli import main
from search.latency.staircase import lower_edges
from search.latency.tables import cache_dir
from search.recipe.config import load_config
from search.results.front import front_trials
from search.results.record import TrialRecord
from search.study.executors.inprocess import run_study
from spaces.compress import compress, prunable_groups
from spaces.compress.greedy import Block, latency_greedy, removal_costs
from spaces.compress.nets import resnet56, tiny_resnet
from spaces.compress.units import group_widths, layer_geometry, policy_units
from tests.conftest import ONE_THREAD

ROOT = Path(__file__).resolve().parents[1]


def recipe(tmp_path: Path, **changes: object) -> dict:
    raw = {
        "name": "tiny_stairs",
        "output_dir": str(tmp_path / "runs"),
        "space": {
            "type": "compress",
            "base": {"model": "spaces.compress.nets:tiny_resnet", "kwargs": {"widths": [16, 32]}, "epochs": 1},
            "keep": [0.25, 1.0], "keep_step": 0.25, "round_to": 4, "policy": ["group", "latency_greedy"],
            "greedy_speedup": [1.1, 2.0], "greedy_anchors": [1.5],
        },
        "data": {"dataset": "digits", "image_size": 8},
        "train": {"epochs": 0.3, "bn_batches": 2, "threads": ONE_THREAD},
        "latency": {"backend": "onnxruntime", "max_seconds": 0.1, "batch_size": 8, "table": "auto", "trust": "always",
                    "table_networks": 5, "table_holdout": 2},
        "search": {"sampler": "random", "trials": 6, "anchors": 1},
        **changes,
    }
    return raw


@pytest.mark.parametrize("make", [lambda: tiny_resnet(10, 1, (16, 32, 64), depth=2), lambda: resnet56()])
def test_policy_units_are_the_layers_of_the_pruned_network(make):
    torch.manual_seed(0)
    model = make()
    x = torch.zeros(1, model.stem[0].in_channels, 16, 16)
    layers = layer_geometry(model, x)
    groups = prunable_groups(model, x)
    rng = random.Random(0)
    for _ in range(3):
        keep = {g.name: rng.choice([0.25, 0.4, 0.6, 0.85, 1.0]) for g in groups}
        units = policy_units(layers, group_widths(groups, keep, 4))
        modules = dict(compress(model, x, keep=keep, round_to=4).named_modules())
        for layer, unit in zip(layers, units, strict=True):
            m = modules[layer.name]
            shape = (m.in_channels, m.out_channels) if isinstance(m, torch.nn.Conv2d) else (m.in_features, m.out_features)
            assert shape == (unit["in_channels"], unit["out_channels"]), layer.name


def test_lower_edges_offer_only_widths_faster_than_every_wider_one():
    stairs = {"a": [(8, 1.0), (12, 2.0), (16, 2.0), (24, 3.0), (32, 3.01)], "flat": [(4, 1.0), (8, 1.0)]}
    edges = lower_edges(stairs, tolerance=0.02)
    assert edges["a"] == [8, 16, 32]  # 12 runs no faster than 16, 24 no faster than 32 (within 2% of the span)
    assert edges["flat"] == [8]  # nothing narrower runs faster: only the full width


def test_latency_greedy_removes_least_importance_per_millisecond_until_the_target():
    cost_per_channel = {"cheap": 0.01, "dear": 1.0}  # ms saved per channel removed
    offered = {"cheap": [8, 16, 32], "dear": [8, 16, 32]}
    costs = {"cheap": removal_costs(torch.ones(32), 32), "dear": removal_costs(torch.ones(32), 32)}

    def predict(widths, dropped):
        return 10.0 + sum(cost_per_channel[g] * w for g, w in widths.items())

    base = predict({"cheap": 32, "dear": 32}, [])
    widths, dropped = latency_greedy(offered, costs, predict, base / 1.5)
    assert predict(widths, dropped) <= base / 1.5 and dropped == []
    assert widths["cheap"] == 32 and widths["dear"] in offered["dear"] and widths["dear"] < 32
    assert latency_greedy(offered, costs, predict, 0.0) == ({"cheap": 8, "dear": 8}, [])  # as far as it goes


def test_latency_greedy_removes_a_block_where_it_saves_more_per_loss_than_narrowing():
    offered = {"stream": [8, 16, 32], "inner": [8, 16, 32]}
    costs = {g: removal_costs(torch.ones(32), 32) for g in offered}  # a channel loses 1, a step of 16 loses 16

    def predict(widths, dropped):
        block = 0.0 if "b" in dropped else 4.0 + 0.01 * widths["inner"]  # a block's time is mostly fixed
        return 10.0 + 0.05 * widths["stream"] + block

    base = predict({"stream": 32, "inner": 32}, [])
    widths, dropped = latency_greedy(offered, costs, predict, base - 4.0, {"b": Block(5.0, ("inner",))})
    assert dropped == ["b"] and widths == {"stream": 32, "inner": 32}  # 5 lost for 4.3 ms, not 16 for 0.16 ms
    dear = latency_greedy(offered, costs, predict, base - 4.0, {"b": Block(1e6, ("inner",))})
    assert dear == ({"stream": 8, "inner": 8}, ["b"])  # dearer than every step of width: taken last


def test_study_screens_candidates_that_miss_the_speedup_and_reuses_the_machine_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path, constraints={"speedup": 1.3})))
    config = load_config(path)
    study = run_study(config, show_progress=False)
    assert "measuring the units" in capsys.readouterr().out
    tables = list(cache_dir().glob("compress-*.json"))
    assert len(tables) == 1 and (config.run_dir / "latency_table.json").is_file()
    assert (config.run_dir / "staircase.png").stat().st_size > 0
    done = study.get_trials(states=(TrialState.COMPLETE,))
    records = [TrialRecord.of(t) for t in done]
    assert all(r.predicted_latency_ms is not None for r in records)
    screened = [r for r in records if r.screened]
    trained = [r for r in records if not r.screened]
    assert screened and trained, [r.candidate["keep"] for r in records]
    for r in screened:
        assert r.feasible is False and r.constraints["speedup"] > 0 and r.accuracy == 0.0
        assert "train" not in r.seconds and r.latency is None
    for r in trained:
        assert r.latency is not None and r.vs_base is not None
    greedy = [r for r in records if r.candidate["policy"] == "latency_greedy"]
    assert greedy and all(r.candidate["speedup"] >= 1.1 for r in greedy)
    assert all(not TrialRecord.of(t).screened for t in front_trials(study))
    capsys.readouterr()
    assert main(["status", str(config.run_dir)]) == 0
    assert capsys.readouterr().out.count("screened") >= len(screened)
    stamp = tables[0].stat().st_mtime_ns
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(recipe(tmp_path, name="tiny_stairs_again", constraints={"speedup": 1.3})))
    run_study(load_config(again), trials=1, show_progress=False)
    assert "reusing" in capsys.readouterr().out and tables[0].stat().st_mtime_ns == stamp


def test_adaptive_bn_screening_with_a_table_times_only_candidates_that_reach_the_top(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))
    raw = recipe(tmp_path, search={"sampler": "random", "trials": 6, "anchors": 0,
                                   "fidelity": {"rungs": [0, 0.3], "eta": 3}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    study = run_study(load_config(path), show_progress=False)
    records = [TrialRecord.of(t) for t in study.get_trials(states=(TrialState.COMPLETE,))]
    stopped = [r for r in records if not r.at_top]
    top = [r for r in records if r.at_top]
    assert stopped and top
    for r in stopped:  # never timed: the table's prediction stands for the latency
        assert r.latency is None and "latency" not in r.seconds and r.rungs[0]["epochs"] == 0
        assert r.latency_ms == r.predicted_latency_ms and r.vs_base["speedup"] == pytest.approx(r.predicted_speedup)
    for r in top:
        assert r.latency["runs"] > 0 and r.seconds["latency"] > 0 and len(r.rungs) == 2
        assert "interleaved" in r.latency["extra"] and r.latency_check["predicted_speedup"] == r.predicted_speedup
        assert r.latency_check["measured_speedup"] == r.vs_base["speedup"]


@pytest.mark.slow  # the fast suite builds a compression table in a study (above) and runs `lut build/check` (test_lut)
def test_lut_build_and_check_work_for_a_compression_recipe(tmp_path):
    path = tmp_path / "lut.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path, latency={"backend": "onnxruntime", "max_seconds": 0.1,
                                                             "batch_size": 8})))
    out = tmp_path / "table.json"
    run = [sys.executable, "-m", "search.cli", "lut"]
    built = subprocess.run([*run, "build", str(path), "--out", str(out), "--networks", "6", "--wait", "0"], cwd=ROOT,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert "staircase:" in built.stdout and (tmp_path / "staircase.png").is_file()
    checked = subprocess.run([*run, "check", str(path), "--table", str(out), "--samples", "4", "--json"], cwd=ROOT,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    summary = json.loads(checked.stdout)["summary"]
    assert summary["candidates"] == 4 and math.isfinite(summary["speedup_mape"])
    assert math.isfinite(summary["speedup_spearman"])


def test_latency_compare_times_models_interleaved_with_the_base(tmp_path):
    wide = export_onnx(tiny_resnet(10, 3, (32, 64, 128)).eval(), (3, 16, 16), tmp_path / "wide.onnx", 1)
    narrow = export_onnx(tiny_resnet(10, 3, (8, 16, 32)).eval(), (3, 16, 16), tmp_path / "narrow.onnx", 1)
    cmd = [sys.executable, "-m", "search.cli", "latency", "--compare", str(wide), str(narrow), "--rounds", "3",
           "--runs", "5"]
    proc = subprocess.run([*cmd, "--json"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    base, other = json.loads(proc.stdout)
    assert base["name"] == str(wide) and base["speedup"] == 1.0 and base["rounds"] == 3
    assert other["low_ms"] <= other["median_ms"] <= other["high_ms"] and other["speedup_low"] <= other["speedup"]
    table = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert table.returncode == 0 and "(base)" in table.stdout and "interleaved" in table.stdout
    lone = subprocess.run([sys.executable, "-m", "search.cli", "latency", "--compare", str(wide)], cwd=ROOT,
                          capture_output=True, text=True)
    assert lone.returncode == 2 and "at least one other model" in lone.stderr
