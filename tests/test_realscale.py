"""The real-scale benchmark (`python -m benchmarks.realscale`) on real CIFAR-10 JPEGs at toy size: the JPEG pack and its
decode, its time-budgeted training through evaluators.train (on the CPU here), the FLOPs-matched baselines, the choice of the policy near 2×,
the report with its ONNX Runtime column and RESULTS.md section; and, marked slow, every stage end to end with
`--smoke` (a tiny base instead of ResNet-56, so it takes a minute on two cores)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from benchmarks.realscale.baselines import match_tp_global, match_uniform
from benchmarks.realscale.data import SPLITS, decode, read_folder, read_pack, write_cifar_batches, write_pack
from benchmarks.realscale.report import SECTION, TABLE_ZIP, Results, time_onnx, write_results
from benchmarks.realscale.run import selected_stages
from benchmarks.realscale.stages import fit, load_base, pick_near
from evaluators.cost import measure_cost
from evaluators.splits import DataBundle, DataError, Split, load_data
from evaluators.to_onnx import export_onnx
from evaluators.train import TrainSettings
from search.recipe.config import load_config
from spaces.compress import load_checkpoint
from spaces.compress.nets import resnet56, tiny_resnet

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"
needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason=f"the CIFAR-10 JPEGs are not at {CIFAR}")
TINY = ["--set", "space.base.model=spaces.compress.nets:tiny_resnet",
        "--set", "space.base.kwargs={widths: [8, 16, 16]}"]


def shaped(channels: int, size: int, classes: int = 10) -> DataBundle:
    """A data set of no images, for what reads only the input shape and the class count."""
    empty = Split(torch.zeros(0, channels, size, size), torch.zeros(0, dtype=torch.long), torch.zeros(channels),
                  torch.ones(channels))
    return DataBundle("shape", empty, empty, empty, classes, channels, size)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def jpegs():
    """The first 12 training and 4 test JPEGs of each CIFAR-10 class, as files."""
    if not CIFAR.is_dir():
        pytest.skip(f"the CIFAR-10 JPEGs are not at {CIFAR}")
    return read_folder(CIFAR, {"train": 12, "test": 4})


def test_resnet56_is_the_papers_network():
    model = resnet56()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 56  # 3×3 convs and the classifier; the two 1×1 projections are shortcuts
    assert 0.85e6 < sum(p.numel() for p in model.parameters()) < 0.86e6
    assert 125e6 < measure_cost(model, (3, 32, 32)).macs < 128e6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@needs_cifar
def test_pack_gives_back_every_jpeg_byte_for_byte_in_a_smaller_file(jpegs, tmp_path):
    info = write_pack(jpegs, tmp_path / "cifar.jpgpack")
    back = read_pack(tmp_path / "cifar.jpgpack")
    for split in SPLITS:
        assert back.files[split] == jpegs.files[split]
        assert np.array_equal(back.labels[split], jpegs.labels[split])
    assert back.classes == jpegs.classes and len(jpegs.classes) == 10
    assert info["images"] == {"train": 120, "test": 40}
    assert info["prefix_bytes"] > 300 and info["bytes"] < 0.75 * info["jpeg_bytes"]


def test_a_file_that_is_not_a_pack_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "cifar.jpgpack"
    path.write_bytes(b"not a pack")
    with pytest.raises(DataError, match="--pack-data"):
        read_pack(path)


@needs_cifar
def test_decoded_batches_give_the_study_the_same_data_as_the_jpeg_folder(jpegs, tmp_path):
    decoded = decode(jpegs, workers=2, parallel_from=0)
    serial = decode(jpegs, workers=1)
    assert all(np.array_equal(decoded.images[s], serial.images[s]) for s in SPLITS)
    from_pack = load_data("cifar10", write_cifar_batches(decoded, tmp_path / "batches"), None, 0.1, 0)
    folder = tmp_path / "folder"  # the same files as an ImageFolder tree, read by the cifar10 loader itself
    counts: dict[tuple[str, str], int] = {}
    for split in SPLITS:
        for data, label in zip(jpegs.files[split], jpegs.labels[split]):
            name = jpegs.classes[label]
            i = counts[split, name] = counts.get((split, name), -1) + 1
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            (folder / split / name / f"{i:04d}.jpg").write_bytes(data)
    from_folder = load_data("cifar10", folder, None, 0.1, 0)
    for split in ("train", "val", "test"):
        a, b = getattr(from_pack, split), getattr(from_folder, split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert len(from_pack.val) == 10 and len(from_pack.test) == 40  # one held-out image of each class


def test_fit_trains_in_place_and_a_spent_budget_cuts_the_schedule_after_two_epochs():
    data = load_data("digits")
    settings = TrainSettings(epochs=4, batch_size=16, max_train_samples=40)
    torch.manual_seed(0)
    model = tiny_resnet(10, 1, (8, 8, 8))
    before = [p.detach().clone() for p in model.parameters()]
    full = fit(model, data, settings)
    assert full["steps"] == 12 and full["epochs_run"] == 4 and math.isfinite(full["final_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert next(model.parameters()).device.type == "cpu" and full["images"] == 40
    cut = fit(tiny_resnet(10, 1, (8, 8, 8)), data, settings, budget_s=0.0)
    assert cut["steps"] == 7 and cut["epochs_planned"] == 4 and len(cut["epoch_seconds"]) == 3


@pytest.fixture(scope="module")
def trained_like():
    """A small ResNet whose BatchNorm scales differ, so L1 ranks channels unevenly, as in a trained network."""
    torch.manual_seed(0)
    model = tiny_resnet(10, 3, (16, 32, 32)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 1.5)
    return model


def test_baselines_are_pruned_to_the_flops_target(trained_like):
    data = shaped(3, 8)
    base_macs = measure_cost(trained_like, (3, 8, 8)).macs
    keep, uniform = match_uniform(trained_like, data, base_macs // 2, 4, (0.2, 1.0))
    ratio, tp_model = match_tp_global(trained_like, data, 0.5, 4)
    for model in (uniform, tp_model):
        assert abs(measure_cost(model, (3, 8, 8)).macs / base_macs - 0.5) < 0.12
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert 0.3 < keep < 0.9 and 0.05 < ratio < 0.9
    widths = {m.out_channels for m in tp_model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(w % 4 == 0 for w in widths)


def test_pick_prefers_a_sampled_policy_near_two_times_over_an_anchor():
    rows = [{"trial": 0, "anchor": True, "speedup_busy": 2.0}, {"trial": 5, "anchor": False, "speedup_busy": 1.7},
            {"trial": 7, "anchor": False, "speedup_busy": 3.5}]
    assert pick_near(rows)["trial"] == 5
    assert pick_near([rows[0], rows[2]])["trial"] == 0
    assert pick_near([rows[2]])["trial"] == 7 and pick_near([]) is None


def test_stages_and_a_missing_checkpoint_say_what_to_do(tmp_path):
    assert selected_stages("auto", tmp_path / "none.pt") == ["1", "2", "3", "4"]
    (tmp_path / "base.pt").write_bytes(b"")
    assert selected_stages("auto", tmp_path / "base.pt") == ["2", "3", "4"]
    assert selected_stages("4,2", tmp_path / "none.pt") == ["2", "4"]
    with pytest.raises(SystemExit, match="unknown stage"):
        selected_stages("1,5", tmp_path / "none.pt")
    config = load_config(ROOT / "studies" / "cifar10_resnet56_prune.yaml")
    assert config.space.base.checkpoint == "benchmarks/checkpoints/resnet56_cifar10.pt"
    with pytest.raises(SystemExit, match="stage 1"):
        load_base(config, shaped(3, 32), tmp_path / "none.pt")


def test_cpu_column_is_filled_from_the_packed_onnx_files_and_the_section_written(tmp_path):
    gpu_run, later = tmp_path / "gpu", tmp_path / "cpu"
    gpu_run.mkdir()
    torch.manual_seed(0)
    with zipfile.ZipFile(gpu_run / TABLE_ZIP, "w") as pack:
        for name, widths in (("base.onnx", (16, 32, 64)), ("uniform.onnx", (8, 16, 32))):
            pack.write(export_onnx(tiny_resnet(10, 3, widths), (3, 32, 32), tmp_path / name, dynamic_batch=True), name)
    results = Results(gpu_run)
    results.data["meta"] = {"command": "python3 -m benchmarks.realscale", "machine": "a GPU machine",
                            "date": "2026-01-01 00:00", "busy_batch": 256, "timing_device": "GPU"}
    results.data["table"] = [
        {"method": "base", "test_acc": 0.93, "delta": 0.0, "speedup_busy": 1.0, "onnx": "base.onnx"},
        {"method": "uniform L1", "test_acc": 0.92, "delta": -0.01, "speedup_busy": 1.8, "onnx": "uniform.onnx"},
    ]
    results.save()
    filled = time_onnx(gpu_run, later, "python -m benchmarks.realscale --time-onnx gpu", rounds=3, runs=5)
    base, uniform = filled.data["table"]
    assert base["cpu_speedup_b1"] == 1.0 and uniform["cpu_ms_b1"] > 0 and uniform["cpu_speedup_b1"] > 0
    assert json.loads((later / "results.json").read_text())["table"][1]["cpu_ms_b1"] == uniform["cpu_ms_b1"]
    report = (later / "results.md").read_text()
    assert "CPU ORT speed-up, batch 1" in report and f"{uniform['cpu_speedup_b1']:.2f}×" in report
    path = write_results(filled, tmp_path / "RESULTS.md")
    text = path.read_text()
    assert f"<!-- {SECTION}:start -->" in text and "Machine: a GPU machine" in text and "published" in text
    write_results(filled, path)
    assert path.read_text().count(f"<!-- {SECTION}:start -->") == 1
    with pytest.raises(SystemExit, match="results.json"):
        time_onnx(tmp_path / "nothing", later, "cmd")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.realscale", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
@needs_cifar
def test_smoke_runs_every_stage_and_the_cpu_column_after_it(tmp_path):
    pack = tmp_path / "cifar.jpgpack"
    done = run_script("--pack-data", str(pack), "--per-class", "30", "10")
    assert done.returncode == 0, done.stderr
    out, work = tmp_path / "out", tmp_path / "work"
    done = run_script("--smoke", "--data", str(pack), "--out", str(out), "--work", str(work), *TINY)
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "results.json").read_text())
    assert not [name for name, stage in data["stages"].items() if stage.get("error")], data["stages"]
    assert [r["key"] for r in data["table"]][0] == "base" and len(data["table"]) == 4
    assert {r["key"] for r in data["table"][1:]} >= {"uniform", "tp_global"}
    assert all(0 <= r["test_acc"] <= 1 and r["ms_busy"] > 0 and r["ms_b1"] > 0 for r in data["table"])
    study = optuna.load_study(study_name="cifar10_resnet56_prune", storage=f"sqlite:///{out / 'study.db'}")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 3
    base = load_checkpoint(tiny_resnet(10, 3, (8, 16, 16)), out / "resnet56_cifar10.pt")
    assert base(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with zipfile.ZipFile(out / TABLE_ZIP) as z:
        assert sorted(z.namelist()) == sorted(r["onnx"] for r in data["table"])
    assert {"log.txt", "results.md", "front_onnx.zip"} <= {p.name for p in out.iterdir()}
    later = tmp_path / "cpu"
    done = run_script("--time-onnx", str(out), "--out", str(later), "--write-results",
                      "--results-file", str(tmp_path / "RESULTS.md"))
    assert done.returncode == 0, done.stderr
    filled = json.loads((later / "results.json").read_text())
    assert all(r["cpu_ms_b1"] > 0 for r in filled["table"])
    assert all(r.get("cpu_ms_b1") for r in filled["stages"]["2"]["front"] if r["onnx"])
    assert f"<!-- {SECTION}:start -->" in (tmp_path / "RESULTS.md").read_text()
    shutil.rmtree(work)
