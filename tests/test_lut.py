"""Latency tables: built on this machine for a tiny blocks space relative to a reference kernel, looked up, checked
against speed-ups measured interleaved with the space's reference network, and used to screen candidates predicted
over the latency limits without training them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from optuna.trial import TrialState
from scipy.stats import spearmanr

from evaluators.latency import get_backend
from evaluators.latency.table import LatencyTable, TableError, unit_key
from evaluators.latency.table_model import SelfCheck, UnitSum, fit_model
from search.cli import main
from search.errors import UsageError
from search.latency.gate import BudgetUnreachable, LatencyGate
from search.latency.predictor import LatencyPredictor
from search.latency.tables import drawn_candidates, open_table
from search.recipe.config import load_config
from search.study.executors.inprocess import run_study
from search.trial.build import build_space
from search.trial.context import recipe_data
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
                                   "latency.trust": "always",
                                   "train.max_train_samples": 64, "train.max_eval_samples": 64, **changes})
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny recipe and the table `slimsearch lut build` wrote for it."""
    tmp = tmp_path_factory.mktemp("lut")
    recipe = write_recipe(tmp / "tiny.yaml", tmp)
    assert main(["lut", "build", str(recipe), "--networks", "5", "--holdout", "2", "--wait", "0"]) == 0
    config = load_config(recipe)
    return recipe, config, config.run_dir / "latency_table.json"


def tiny_space(config):
    return build_space(config, recipe_data(config))


def test_a_table_built_for_an_auto_recipe_is_reused_by_its_other_studies(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))
    recipe = write_recipe(tmp_path / "auto.yaml", tmp_path, **{"latency.table": "auto"})
    assert main(["lut", "build", str(recipe), "--networks", "2", "--holdout", "1", "--wait", "0"]) == 0
    assert "for every study of this space, engine and device" in capsys.readouterr().out
    run_study(load_config(recipe, ["name=another", "search.trials=1"]), show_progress=False)
    said = capsys.readouterr().out
    assert "latency table: reusing" in said and "measuring the units" not in said


def test_table_has_every_unit_of_the_space_relative_to_the_reference_with_its_protocol(built):
    _, config, path = built
    data = json.loads(path.read_text())
    assert data["format"] == 2 and data["backend"] == "onnxruntime" and data["threads"] == 1
    assert data["precision"] == "fp32" and data["batch_size"] == 1 and "thread" in data["device"]
    space = tiny_space(config)
    expected = {unit_key(u) for u in enumerate_units(space)}
    assert set(data["entries"]) == expected
    for entry in data["entries"].values():  # a ratio to the reference kernel, its spread, ms as it ran, weights
        assert entry["rel"] > 0 and entry["ms"] > 0 and entry["spread"] >= 0
        assert entry["weights"] == sum(p.numel() for p in unit_module(entry["unit"]).parameters())
    assert "all" in data["meta"]["coverage"] and data["model"]["networks"] == 5
    assert data["anchor"]["name"] == "reference network" and data["anchor"]["rel"] > 0
    check = data["check"]
    assert check["networks"] == 2 and check["threshold"] == 10.0 and check["mape"] >= 0
    protocol = data["protocol"]
    assert protocol["reference_ms"] > 0 and protocol["created"] and "busy" in protocol
    assert {"others_cores", "steal_share", "loadavg", "seconds"} <= set(protocol["load"])
    table = LatencyTable.load(path)
    for candidate in drawn_candidates(space, 5, seed=3):
        units = space.units(candidate)
        assert all(table.lookup(u) > 0 for u in units)
        s = table.sum_units(units)
        assert s.missing == [] and s.count == len(units) and table.predict(units) > 0


def test_units_rebuild_the_candidate(built):
    _, config, _ = built
    space = tiny_space(config)
    for candidate in drawn_candidates(space, 4, seed=0):
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
                 "--networks", "1", "--holdout", "1", "--wait", "0"]) == 0
    assert "sampled candidates" in capsys.readouterr().out
    table = LatencyTable.load(out)
    space = tiny_space(config)
    drawn = [*drawn_candidates(space, 2, config.seed, {"policy": "group"}), space.reference_candidate()]
    expected = {unit_key(u) for c in drawn for u in space.units(c)}
    assert set(table.entries) == expected and "2 sampled candidates" in table.meta["coverage"]
    assert main(["lut", "build", str(recipe), "--out", str(out), "--wait", "0"]) == 0  # exists: left as it is
    assert "--force" in capsys.readouterr().out and LatencyTable.load(out).protocol == table.protocol


def test_lut_check_reports_the_speedup_error_against_the_reference_network(built, capsys):
    recipe, _, path = built
    assert main(["lut", "check", str(recipe), "--samples", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    summary = report["summary"]
    assert summary["candidates"] == 3 and summary["table"] == str(path)
    rows = report["rows"]
    assert all(r["predicted_speedup"] > 0 and r["measured_speedup"] > 0 and r["spread"] >= 0 for r in rows)
    predicted, measured = ([r[k] for r in rows] for k in ("predicted_speedup", "measured_speedup"))
    assert summary["speedup_mape"] == pytest.approx(100 * np.mean(np.abs(np.subtract(predicted, measured)) / measured))
    assert summary["speedup_spearman"] == pytest.approx(spearmanr(predicted, measured).statistic, nan_ok=True)
    assert {"others_cores", "steal_share"} <= set(summary["load"])


def test_table_from_another_backend_or_device_is_refused(built, tmp_path, capsys):
    recipe, _, path = built
    with pytest.raises(UsageError, match="latency.table: .*backend 'onnxruntime'.*here: 'torch'"):
        open_table(path, get_backend("torch", device="cpu"), "fp32", 1)
    other = json.loads(path.read_text())
    other["device"] = "Some Other CPU (1 thread)"
    moved = tmp_path / "other.json"
    moved.write_text(json.dumps(other))
    assert main(["lut", "check", str(recipe), "--table", str(moved), "--samples", "2"]) == 2
    assert "Some Other CPU" in capsys.readouterr().err
    assert main(["lut", "check", str(recipe), "--table", str(tmp_path / "none.json")]) == 2
    assert "--table:" in capsys.readouterr().err


def test_a_table_of_the_older_format_asks_to_be_rebuilt(built, tmp_path):
    _, _, path = built
    old = json.loads(path.read_text())
    old["format"] = 1
    moved = tmp_path / "old.json"
    moved.write_text(json.dumps(old))
    with pytest.raises(TableError, match="older slimsearch.*--force"):
        LatencyTable.load(moved)


def test_the_model_is_fitted_on_speedups_and_keeps_only_terms_that_predict_held_out_networks():
    """Networks whose latency is exactly `0.5 + 0.8·Σ units`: the fit recovers it, predicts their speed-ups without
    error, and its leave-one-out error is zero; a term that carries no information (a constant unit count) is
    never chosen."""
    sums = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    feats = [UnitSum(s, 7, 1000 * s).features() for s in sums]
    anchor = UnitSum(8.0, 7, 8000).features()
    truth = lambda f: 0.5 + 0.8 * f["units"]  # noqa: E731
    speedups = [truth(anchor) / truth(f) for f in feats]
    model = fit_model(feats, speedups, anchor, truth(anchor))
    assert "count" not in model.coef and model.loo_mape == pytest.approx(0, abs=1e-6)
    for f, s in zip(feats, speedups):
        assert truth(anchor) / (model.intercept + sum(c * f[t] for t, c in model.coef.items())) == pytest.approx(s)


def test_a_family_that_runs_slower_inside_networks_gets_its_own_slope_where_it_predicts_better():
    """Networks of two block families, the `slow` one 1.4× slower inside a network than its units add up to (as a
    5×5 factorized block on ONNX Runtime): the common slope alone misses by several percent, the family slope the
    leave-one-out choice keeps predicts every network within 1%."""
    rng = np.random.default_rng(0)
    sums = [UnitSum(float(a + b), 9, 0.0, families={"fast": float(a), "slow": float(b)})
            for a, b in rng.uniform(1.0, 6.0, size=(24, 2))]
    anchor = UnitSum(7.0, 9, 0.0, families={"fast": 5.0, "slow": 2.0})
    truth = lambda s: 0.3 + s.families["fast"] + 1.4 * s.families["slow"]  # noqa: E731
    speedups = [truth(anchor) / truth(s) for s in sums]
    model = fit_model([s.features() for s in sums], speedups, anchor.features(), truth(anchor))
    assert model.coef["units"] + model.coef["units.slow"] > model.coef["units"] + model.coef["units.fast"]
    assert model.loo_mape < 1.0
    common = fit_model([UnitSum(s.total, 9, 0.0).features() for s in sums], speedups,
                       UnitSum(7.0, 9, 0.0).features(), truth(anchor))
    assert common.loo_mape > 3 * model.loo_mape


def test_a_table_that_failed_its_self_check_or_was_measured_under_load_is_not_vouched_for(built, tmp_path):
    _, _, path = built
    table = LatencyTable.load(path)
    table.check = SelfCheck(8, 3.0, 6.0, 0.98, 10.0)
    table.protocol["busy"] = None
    assert table.trusted and table.problems() == []
    table.check = SelfCheck(8, 14.0, 30.0, 0.6, 10.0)
    assert not table.trusted and "14.0% error" in table.problems()[0]
    table.check = SelfCheck(8, 3.0, 6.0, 0.98, 10.0)
    table.protocol["busy"] = "other processes used 1.02 cores"
    assert not table.trusted and "busy (other processes used 1.02 cores)" in table.problems()[0]


def test_over_budget_candidates_are_screened_untrained(built, tmp_path):
    _, _, path = built
    recipe = write_recipe(tmp_path / "budget.yaml", tmp_path, **{"latency.table": str(path),
                                                                 "latency.budget_ms": 1e-6})
    study = run_study(load_config(recipe), timeout=4, show_progress=False)
    assert study.trials
    for t in study.trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("error")
        assert "misses latency.budget_ms" in t.user_attrs["screened"]
        assert t.user_attrs["feasible"] is False and t.user_attrs["constraints"]["budget_ms"] > 0
        assert t.user_attrs["predicted_latency_ms"] > 1e-6 and t.user_attrs["predicted_speedup"] > 0
        assert t.user_attrs["accuracy"] == 0 and "latency" not in t.user_attrs


def test_within_budget_candidates_train_and_record_the_prediction(built, tmp_path):
    _, _, path = built
    recipe = write_recipe(tmp_path / "budget.yaml", tmp_path, **{"latency.table": str(path),
                                                                 "latency.budget_ms": 1e6, "search.trials": 1})
    study = run_study(load_config(recipe), show_progress=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 1
    assert all(t.user_attrs["predicted_latency_ms"] > 0 and t.user_attrs["feasible"] for t in done)


def test_the_gate_merges_the_latency_limits_and_stops_after_a_streak(built, tmp_path):
    _, config, path = built
    space = tiny_space(config)
    table = LatencyTable.load(path)
    table.check, table.protocol["busy"] = SelfCheck(2, 1.0, 1.0, 1.0, 10.0), None
    candidate = drawn_candidates(space, 1, seed=0)[0]
    limited = config.model_copy(update={"latency": config.latency.model_copy(update={"budget_ms": 1e-6}),
                                        "constraints": config.constraints.model_copy(update={"speedup": 1e3})})
    gate = LatencyGate(limited, LatencyPredictor(table, space, 0.05), max_streak=1)
    prediction = gate.predictor.predict(candidate)
    assert prediction.ms == pytest.approx(table.predict(space.units(candidate)) * 0.05)
    said = gate.missed(prediction)
    assert "latency.budget_ms" in said and "constraints.speedup 1000×" in said
    with pytest.raises(BudgetUnreachable, match="relax the limit"):
        gate.missed(prediction)
    table.check = SelfCheck(2, 50.0, 50.0, 0.0, 10.0)
    assert LatencyGate(limited, LatencyPredictor(table, space, 0.05)).missed(prediction) is None  # not vouched for
    assert LatencyGate(limited, LatencyPredictor(table, space, 0.05, "always")).missed(prediction) is not None


def test_budget_without_table_is_a_config_error(tmp_path):
    recipe = write_recipe(tmp_path / "bad.yaml", tmp_path, **{"latency.budget_ms": 0.1})
    assert main(["validate", str(recipe)]) == 2


@pytest.mark.parametrize("content", ["[1, 2]", "\xff\xfe"])
def test_a_file_that_is_not_a_table_is_a_table_error(tmp_path, content):
    path = tmp_path / "table.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(TableError, match="not a latency table written by `slimsearch lut build`"):
        LatencyTable.load(path)


def test_a_study_with_latency_limits_warns_when_its_table_cannot_predict_part_of_the_space(built, tmp_path, capsys):
    _, _, path = built
    data = json.loads(path.read_text())
    data["entries"] = {k: v for k, v in data["entries"].items() if not k.startswith("mbconv")}
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(data))
    recipe = write_recipe(tmp_path / "partial.yaml", tmp_path, **{"latency.table": str(partial),
                                                                  "latency.budget_ms": 1e6, "search.trials": 1})
    run_study(load_config(recipe), show_progress=False)
    said = capsys.readouterr().err
    assert "cannot predict" in said and "trained without the latency limits' check" in said
