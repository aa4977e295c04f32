"""Network Slimming as a study: the base sparsity-trained once per λ before the trials (cached beside base.pt), the
|γ| distribution before and after stored and drawn, each candidate cut from the base its trial chose."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn as nn
import yaml
from optuna.trial import TrialState

import search.trial.scoring.base_network as base_network
import search.trial.scoring.sparsity as sparsity
from evaluators.train import batchnorm_scales
from search.cli import main
from search.recipe.config import load_config
from search.trial.build import build_context
from spaces import RandomSuggest
from spaces.compress import CompressError, CompressSpace, CompressSpaceConfig, fingerprint
from spaces.compress.nets import tiny_resnet
from tests.conftest import ONE_THREAD

ROOT = Path(__file__).resolve().parents[1]
LAMBDAS = [0.01, 0.05]


def tiny_slimming(tmp_path: Path, **sparsity_changes: object) -> Path:
    """studies/digits_slimming.yaml at a size where the whole study takes seconds."""
    raw = yaml.safe_load((ROOT / "studies" / "digits_slimming.yaml").read_text())
    raw["name"], raw["output_dir"] = "tiny_slimming", str(tmp_path / "runs")
    raw["space"]["base"].update(kwargs={"widths": [16, 16, 32]}, epochs=1)
    raw["space"]["base"]["sparsity"] = {"l1": LAMBDAS, "epochs": 1, "lr": 0.05, **sparsity_changes}
    raw["space"]["keep"], raw["space"]["keep_step"] = [0.2, 0.8], 0.2
    raw["data"]["image_size"] = 8
    raw["train"].update(epochs=0.5, bn_batches=2, threads=ONE_THREAD)
    raw["latency"].update(max_seconds=0.2, batch_size=1)
    raw["search"] = {"sampler": "random", "trials": 4, "anchors": 1}
    path = tmp_path / "slimming.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_slimming_study_sparsity_trains_each_base_once_and_cuts_candidates_from_them(
    tmp_path, capsys, monkeypatch
):
    path = tiny_slimming(tmp_path)
    assert main(["run", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sparsity training: 1 epoch(s) at lr 0.05" in out and "λ=0.01: |γ| median" in out

    config = load_config(path)
    run_dir = config.run_dir
    files = [run_dir / f"base-l1-{l1:g}.pt" for l1 in LAMBDAS]
    assert all(f.is_file() for f in files)
    assert (run_dir / "gamma.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamps = [f.stat().st_mtime_ns for f in [run_dir / "base.pt", *files, run_dir / "gamma.png"]]

    study = optuna.load_study(study_name="tiny_slimming", storage=f"sqlite:///{run_dir / 'study.db'}")
    record = study.user_attrs["sparsity"]
    assert record["epochs"] == 1 and set(record["after"]) == {"0.01", "0.05"}
    before = batchnorm_scales(build_context(config).space.base)
    assert record["before"]["p50"] == pytest.approx(float(torch.quantile(before.double(), 0.5)))
    assert record["before"]["scales"] == len(before) and 0 <= record["before"]["below_0.01"] <= 1
    after = record["after"]
    assert after["0.05"]["mean"] < after["0.01"]["mean"] < record["before"]["mean"]  # stronger λ, smaller γ
    assert all(0 <= a["accuracy"] <= 1 and {"p05", "p95", "below_0.001"} <= set(a) for a in after.values())

    space = build_context(config).space
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4
    assert {t.user_attrs["base_l1"] for t in done if t.user_attrs.get("anchor")} == set(LAMBDAS)
    for t in done:
        candidate, l1 = t.user_attrs["candidate"], t.user_attrs["base_l1"]
        assert candidate["base"]["l1"] == l1 and candidate["policy"] == "global"
        assert Path(candidate["base"]["checkpoint"]).name == f"base-l1-{l1:g}.pt" == after[f"{l1:g}"]["checkpoint"]
        assert candidate["base"]["sha256"] == after[f"{l1:g}"]["sha256"] == fingerprint(space.sparse[l1][0])
        assert space.teacher_for(candidate) is space.sparse[l1][0]
        assert sum(p.numel() for p in space.build(candidate).parameters()) == t.user_attrs["params"]
        if "base.l1" in t.params:
            assert t.params["base.l1"] == l1

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed study trained a base again")

    monkeypatch.setattr(base_network, "train_with_progress", no_training)
    monkeypatch.setattr(sparsity, "train_model", no_training)
    assert main(["run", str(path), "--trials", "5", "--no-progress"]) == 0
    assert stamps == [f.stat().st_mtime_ns for f in [run_dir / "base.pt", *files, run_dir / "gamma.png"]]
    study = optuna.load_study(study_name="tiny_slimming", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5 and study.user_attrs["sparsity"] == record

    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    status = " ".join(capsys.readouterr().out.split())
    assert "base λ=0.01 | bn_scale global keep" in status and "histogram:" in status and "gamma.png" in status


@pytest.mark.parametrize("sparsity_section, message", [
    ({"l1": 1e-3, "epoch": 5}, "unknown key 'epoch': sparsity takes l1"),
    ({"l1": -1e-3}, "cannot be negative"),
    ({"l1": [1e-3, -1e-2]}, "cannot be negative"),
    ({"l1": [1e-3, 1e-3]}, "each λ may be listed once"),
    ({"l1": 1e-3, "epochs": 0.5}, "at least 1 epoch; write e.g. epochs: 5 (got 0.5)"),
    ({"epochs": 5}, "space.base.sparsity.l1: required key is missing"),
    ({"l1": []}, "give at least one λ"),
])
def test_bad_sparsity_section_is_a_clear_error(tmp_path, capsys, sparsity_section, message):
    path = tiny_slimming(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["space"]["base"]["sparsity"] = sparsity_section
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "space.base.sparsity" in err and message in err


def slim_space(l1: float | list[float], bases: dict[float, nn.Module]) -> CompressSpace:
    raw = {"type": "compress", "policy": ["global"], "importance": ["bn_scale"], "keep": [0.2, 0.8],
           "keep_step": 0.2, "base": {"model": "spaces.compress.nets:tiny_resnet", "sparsity": {"l1": l1}}}
    torch.manual_seed(0)
    base = tiny_resnet(num_classes=10, in_channels=1, widths=(16, 16, 32)).eval()
    return CompressSpace(CompressSpaceConfig.model_validate(raw), in_channels=1, num_classes=10, image_size=8,
                         base=base, sparse={k: (m, f"base-l1-{k:g}.pt") for k, m in bases.items()})


def shrunk(scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = tiny_resnet(num_classes=10, in_channels=1, widths=(16, 16, 32)).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features) * scale
    return model


def test_one_lambda_is_no_parameter_and_a_candidate_is_cut_from_its_own_base():
    one = slim_space(0.01, {0.01: shrunk(0.1)})
    suggest = RandomSuggest(0)
    candidate = one.sample(suggest)
    assert "base.l1" not in suggest.values and candidate["base"]["l1"] == 0.01
    assert candidate["base"]["sha256"] == fingerprint(one.sparse[0.01][0]) != fingerprint(one.base)
    assert CompressSpace.describe(candidate).startswith("base λ=0.01 | bn_scale global keep")
    built = one.build(candidate)
    kept = [m.weight for m in built.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(float(w.detach().abs().max()) <= 0.1 for w in kept)  # the γ of the sparse base, not of the original
    dense = copy.deepcopy(candidate)
    dense["base"] = dict(one.base_spec)
    assert one.teacher_for(dense) is one.base and one.teacher_for(candidate) is one.sparse[0.01][0]
    stranger = {**candidate, "base": {**candidate["base"], "sha256": "f" * 64}}
    with pytest.raises(CompressError, match="base weights ffffffffffff…, this space holds .*base-l1-0.01.pt"):
        one.build(stranger)

    two = slim_space([0.01, 0.03], {0.01: shrunk(0.1), 0.03: shrunk(0.01)})
    seen = {two.sample(RandomSuggest(seed))["base"]["l1"] for seed in range(8)}
    assert seen == {0.01, 0.03}
    anchors = two.anchors(2)
    assert [(a["base.l1"], a["keep.global"]) for a in anchors] == [(0.01, 0.6), (0.01, 0.4), (0.03, 0.6), (0.03, 0.4)]
    with pytest.raises(CompressError, match="no sparsity-trained base for λ 0.03"):
        slim_space([0.01, 0.03], {0.01: shrunk(0.1)})


def test_gamma_summary_counts_the_small_scales():
    summary = sparsity.gamma_summary(torch.tensor([0.0005, 0.005, 0.5, 1.0]))
    assert summary["scales"] == 4 and summary["below_0.01"] == 0.5 and summary["below_0.001"] == 0.25
    assert summary["p50"] == pytest.approx(0.2525) and summary["mean"] == pytest.approx(1.5055 / 4)
