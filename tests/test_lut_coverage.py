"""Latency tables that did not measure every unit: units estimated from measured neighbours (their latency relative
to the reference and their weights), and `lut check` that fails instead of printing `MAPE nan%`."""

from __future__ import annotations

import pytest

from evaluators.latency.table import LatencyTable, unit_key
from search.cli import main
from search.recipe.config import load_config
from search.trial.context import make_backend


def unit(block: str, cin: int, cout: int) -> dict:
    return {"block": block, "in_channels": cin, "out_channels": cout, "stride": 1, "resolution": 8,
            "out_resolution": 8, "options": {"kernel_size": 3}}


def timed(u: dict) -> float:
    """A made-up latency that grows with the work of a unit."""
    return 0.01 + 2e-5 * u["in_channels"] * u["out_channels"]


def table_of(units: list[dict]) -> LatencyTable:
    table = LatencyTable("onnxruntime", "1", "cpu", "fp32", 1)
    table.entries = {unit_key(u): {"rel": timed(u), "weights": 9 * u["in_channels"] * u["out_channels"], "unit": u}
                     for u in units}
    return table


def test_a_unit_not_measured_is_estimated_from_its_family():
    widths = (8, 16, 32, 48)
    table = table_of([unit("conv", i, o) for i in widths for o in widths if (i, o) != (16, 32)])
    wanted = unit("conv", 16, 32)
    assert table.lookup(wanted) is None
    assert table.estimate(wanted) == pytest.approx(timed(wanted), rel=0.05)
    s = table.sum_units([unit("conv", 8, 8), wanted])
    assert s.estimated == [unit_key(wanted)] and s.missing == []
    assert s.weights == pytest.approx(9 * (8 * 8 + 16 * 32), rel=0.05) and table.predict([unit("conv", 8, 8), wanted])


def test_a_family_with_few_members_scales_its_nearest_by_the_work():
    table = table_of([unit("conv", 16, 16)])
    assert table.estimate(unit("conv", 16, 32)) == pytest.approx(2 * timed(unit("conv", 16, 16)))


def test_a_unit_of_a_family_never_measured_stays_missing():
    table = table_of([unit("conv", 16, 16)])
    other = unit("dwsep", 16, 16)
    assert table.sum_units([unit("conv", 16, 16), other]).missing == [unit_key(other)]
    assert table.predict([unit("conv", 16, 16), other]) is None


def test_lut_check_of_a_table_that_predicts_nothing_fails(recipe_file, tmp_path, capsys):
    recipe = recipe_file()
    config = load_config(recipe)
    empty = tmp_path / "empty.json"
    backend = make_backend(config.latency)
    LatencyTable(backend.name, backend.version(), backend.device(), "fp32", 1).save(empty)
    assert main(["lut", "check", str(recipe), "--table", str(empty), "--samples", "2"]) == 1
    out = capsys.readouterr().out
    assert "no MAPE" in out and "nan" not in out
