"""Latency tables: built on this machine for a tiny blocks space, looked up, checked, and used to skip
candidates predicted over the latency budget without training them."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from scipy.stats import spearmanr

from evaluators.latency import get_backend
from evaluators.latency.table import LatencyTable, TableError, fit_correction, unit_key
from search.cli import main
from search.errors import UsageError
from search.recipe.config import load_config
from search.study.executors.inprocess import run_study
from search.trial.budget import BudgetUnreachable, LatencyBudget
from search.trial.build import build_space
from search.trial.context import recipe_data
from search.trial.lut import load_table, sample_candidates
from spaces.blocks.units import enumerate_units, unit_module
from tests.conftest import tiny_recipe

TINY_SPACE = {
    "type": "blocks",
    "blocks": ["dwsep", "mbconv"],
    "stem_width": [8, 8],
    "stages": [{"stride": 2, "width": [8, 16], "depth": [1, 2]}],
    "options": {"dwsep": {"kernel_size": [3]}, "mbconv": {"kernel_size": [3], "expand_ratio": [1, 3]}},
}


def write_recipe(path, tmp_path, **changes):
    raw = tiny_recipe(tmp_path, **{"space": TINY_SPACE, "latency.max_seconds": 0.1, "search.trials": 2,
                                   "train.max_train_samples": 64, "train.max_eval_samples": 64, **changes})
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny recipe and the table `slimsearch lut build` wrote for it."""
    tmp = tmp_path_factory.mktemp("lut")
    recipe = write_recipe(tmp / "tiny.yaml", tmp)
    assert main(["lut", "build", str(recipe), "--networks", "4"]) == 0
    config = load_config(recipe)
    return recipe, config, config.run_dir / "latency_table.json"


def tiny_space(config):
    return build_space(config, recipe_data(config))


def test_a_table_built_for_an_auto_recipe_is_reused_by_its_other_studies(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))
    recipe = write_recipe(tmp_path / "auto.yaml", tmp_path, **{"latency.table": "auto"})
    assert main(["lut", "build", str(recipe), "--networks", "2"]) == 0
    assert "for every study of this base, engine and device" in capsys.readouterr().out
    run_study(load_config(recipe, ["name=another", "search.trials=1"]), show_progress=False)
    said = capsys.readouterr().out
    assert "latency table: reusing" in said and "measuring the units" not in said


def test_table_has_every_unit_of_the_space_with_provenance(built):
    _, config, path = built
    data = json.loads(path.read_text())
    assert data["backend"] == "onnxruntime" and data["backend_version"] and data["threads"] == 1
    assert data["precision"] == "fp32" and data["batch_size"] == 1 and "thread" in data["device"]
    space = tiny_space(config)
    expected = {unit_key(u) for u in enumerate_units(space)}
    assert set(data["entries"]) == expected
    assert "all" in data["meta"]["coverage"] and data["correction"]["networks"] == 4
    assert "dwsep-input:8x8x8-output:4x4x16-stride:2-kernel_size:3" in expected
    assert "mbconv-input:4x4x16-output:4x4x16-stride:1-expand_ratio:3-kernel_size:3" in expected
    table = LatencyTable.load(path)
    for candidate in sample_candidates(space, 5, seed=3):
        units = space.units(candidate)
        assert all(table.lookup(u) > 0 for u in units)
        prediction = table.predict(units)
        assert prediction.missing == [] and prediction.ms is not None and prediction.n_units == len(units)


def test_units_rebuild_the_candidate(built):
    _, config, _ = built
    space = tiny_space(config)
    for candidate in sample_candidates(space, 4, seed=0):
        units = space.units(candidate)
        assert [u["block"] for u in units][0] == "stem" and units[-1]["block"] == "classifier"
        net = torch.nn.Sequential(*[unit_module(u) for u in units])
        assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in space.build(candidate).parameters())
        x = torch.zeros(1, space.in_channels, space.image_size, space.image_size)
        for unit, module in zip(units, net):
            assert x.shape[1:] == (unit["in_channels"], unit["resolution"], unit["resolution"])
            x = module.eval()(x)
        assert x.shape == (1, space.num_classes)


def test_too_many_configurations_measure_those_of_sampled_candidates(built, tmp_path, capsys):
    recipe, config, _ = built
    out = tmp_path / "sampled.json"
    assert main(["lut", "build", str(recipe), "--out", str(out), "--max-configs", "5", "--samples", "2",
                 "--networks", "1"]) == 0
    assert "sampled candidates" in capsys.readouterr().out
    table = LatencyTable.load(out)
    space = tiny_space(config)
    expected = {unit_key(u) for c in sample_candidates(space, 2, config.seed) for u in space.units(c)}
    expected |= {unit_key(u) for u in space.units(sample_candidates(space, 1, config.seed + 100_000)[0])}
    assert set(table.entries) == expected and "2 sampled candidates" in table.meta["coverage"]


def test_lut_check_reports_mape_and_spearman(built, capsys):
    recipe, _, path = built
    assert main(["lut", "check", str(recipe), "--samples", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    summary = report["summary"]
    assert summary["candidates"] == 3 and summary["table"] == str(path)
    assert all(r["predicted_ms"] > 0 and r["measured_ms"] > 0 for r in report["rows"])
    predicted, measured = ([r[k] for r in report["rows"]] for k in ("predicted_ms", "measured_ms"))
    assert summary["mape_percent"] == pytest.approx(100 * np.mean(np.abs(np.subtract(predicted, measured)) / measured))
    assert summary["spearman"] == pytest.approx(spearmanr(predicted, measured).statistic, nan_ok=True)


def test_table_from_another_backend_or_device_is_refused(built, tmp_path, capsys):
    recipe, _, path = built
    with pytest.raises(UsageError, match="backend 'onnxruntime'.*here: 'torch'"):
        load_table(path, get_backend("torch", device="cpu"), "fp32", 1)
    other = json.loads(path.read_text())
    other["device"] = "Some Other CPU (1 thread)"
    moved = tmp_path / "other.json"
    moved.write_text(json.dumps(other))
    assert main(["lut", "check", str(recipe), "--table", str(moved), "--samples", "2"]) == 2
    assert "Some Other CPU" in capsys.readouterr().err
    assert main(["lut", "check", str(recipe), "--table", str(tmp_path / "none.json")]) == 2


def test_correction_is_fitted_by_least_squares():
    sums, counts = [1.0, 2.0, 3.0, 4.0, 5.0], [3, 5, 4, 6, 7]
    measured = [0.5 + 0.1 * n + 0.8 * s for s, n in zip(sums, counts)]
    corr = fit_correction(sums, counts, measured)
    assert corr.intercept_ms == pytest.approx(0.5) and corr.per_unit_ms == pytest.approx(0.1)
    assert corr.scale == pytest.approx(0.8) and corr.fit_mape == pytest.approx(0, abs=1e-9)


def test_correction_never_predicts_zero_or_less():
    """Unit sums that overcount the networks (per-session overhead) give a line that falls below zero for a
    small candidate; the prediction there is the fitted ratio of measured to summed latency."""
    sums, counts, measured = [0.10, 0.12, 0.14, 0.16], [5, 5, 5, 5], [0.040, 0.050, 0.061, 0.070]
    corr = fit_correction(sums, counts, measured)
    assert corr.per_unit_ms == 0  # one unit count: per-unit cost and intercept cannot be told apart
    assert corr.intercept_ms < 0 and corr.ratio == pytest.approx(sum(measured) / sum(sums))
    assert corr.apply(0.03, 3) == pytest.approx(corr.ratio * 0.03)
    assert corr.apply(0.12, 5) == pytest.approx(0.12 + corr.intercept_ms)


def test_over_budget_candidates_are_skipped_untrained(built, tmp_path):
    _, _, path = built
    recipe = write_recipe(tmp_path / "budget.yaml", tmp_path, **{"latency.table": str(path),
                                                                 "latency.budget_ms": 1e-6})
    study = run_study(load_config(recipe), timeout=4, show_progress=False)
    assert study.trials
    for t in study.trials:
        assert t.state == TrialState.PRUNED
        assert "over latency.budget_ms" in t.user_attrs["error"] and "skipped without training" in t.user_attrs["error"]
        assert t.user_attrs["predicted_latency_ms"] > 1e-6
        assert "accuracy" not in t.user_attrs and "latency" not in t.user_attrs


def test_within_budget_candidates_train_and_record_the_prediction(built, tmp_path):
    _, _, path = built
    recipe = write_recipe(tmp_path / "budget.yaml", tmp_path, **{"latency.table": str(path),
                                                                 "latency.budget_ms": 1e6, "search.trials": 1})
    study = run_study(load_config(recipe), show_progress=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 1
    assert all(t.user_attrs["predicted_latency_ms"] > 0 and "accuracy" in t.user_attrs for t in done)


def test_unreachable_budget_fails_after_a_streak(built, tmp_path):
    _, config, path = built
    space = tiny_space(config)
    budget = LatencyBudget(LatencyTable.load(path), space, 1e-6, str(path), max_streak=1)
    prediction = budget.predict(sample_candidates(space, 1, seed=0)[0])
    assert prediction.ms > 1e-6
    with pytest.raises(optuna.TrialPruned, match="over latency.budget_ms"):
        budget.enforce(prediction)
    with pytest.raises(BudgetUnreachable, match="raise the budget"):
        budget.enforce(prediction)


def test_budget_without_table_is_a_config_error(tmp_path):
    recipe = write_recipe(tmp_path / "bad.yaml", tmp_path, **{"latency.budget_ms": 0.1})
    assert main(["validate", str(recipe)]) == 2


@pytest.mark.parametrize("content", ["[1, 2]", "\xff\xfe"])
def test_a_file_that_is_not_a_table_is_a_table_error(tmp_path, content):
    path = tmp_path / "table.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(TableError, match="not a latency table written by `slimsearch lut build`"):
        LatencyTable.load(path)
