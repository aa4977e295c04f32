"""`slimsearch finetune` on real digits runs: the files, card and curve it writes, ONNX equal to PyTorch, a kill (Ctrl-C,
then SIGKILL) and a continue that ends where a straight run ends, a finished fine-tune not run again, a compression
run distilled from its base and timed against it, and bad input refused with exit 2 before anything is written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from optuna.trial import TrialState, create_trial

from evaluators.splits import load_data
from evaluators.train import TrainSettings, train_model
from search.cli import main
from search.export.picks import pick_trial
from search.export.trial import rebuild
from search.recipe.config import load_config
from search.study.executors.inprocess import run_study
from spaces.compress.nets import tiny_resnet
from tests.conftest import ONE_THREAD, ROOT, tiny_study

EPOCHS = "6"
FILES = {"model.pt", "candidate.json", "recipe.yaml", "model.onnx", "card.md", "card.json", "finetune.csv",
         "finetune.png", "finetune-checkpoint.pt"}


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    """A two-trial digits block study, its fastest front trial, and that trial fine-tuned straight through."""
    tmp = tmp_path_factory.mktemp("finetune-blocks")
    config, study = tiny_study(tmp, **{"search.trials": 2})
    trial = pick_trial(study, "fastest").number
    out = tmp / "straight"
    assert main(["finetune", str(config.run_dir), "--trial", str(trial), "--epochs", EPOCHS, "--out", str(out)]) == 0
    return config, study, trial, out


@pytest.fixture(scope="module")
def compress(tmp_path_factory):
    """A two-trial digits compression study of a tiny ResNet from a checkpoint trained here for one epoch."""
    tmp = tmp_path_factory.mktemp("finetune-compress")
    torch.manual_seed(0)
    base = tiny_resnet(10, 1, widths=(16, 16, 32))
    train_model(base, load_data("digits", image_size=8), TrainSettings(epochs=1, lr=0.1))
    torch.save(base.state_dict(), tmp / "base-ckpt.pt")
    raw = {
        "name": "tiny_prune", "output_dir": str(tmp / "runs"),
        "space": {"type": "compress", "base": {"model": "spaces.compress.nets:tiny_resnet",
                                               "kwargs": {"widths": [16, 16, 32]}, "checkpoint": str(tmp / "base-ckpt.pt")},
                  "keep": [0.4, 0.8], "keep_step": 0.2, "importance": ["l1"], "precision": ["fp32"]},
        "data": {"dataset": "digits", "image_size": 8},
        "train": {"epochs": 0.3, "kd_alpha": 0.5, "bn_batches": 2, "threads": ONE_THREAD},
        "latency": {"backend": "onnxruntime", "max_seconds": 0.2},
        "search": {"sampler": "random", "trials": 2},
    }
    (tmp / "prune.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp / "prune.yaml")
    study = run_study(config, show_progress=False)
    return config, study, tmp


def history(out: Path) -> list[dict[str, str]]:
    with (out / "finetune.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_fine_tune_writes_its_model_card_and_curve_and_onnx_matches_pytorch(blocks):
    config, study, trial, out = blocks
    assert FILES <= {p.name for p in out.iterdir()}
    card = json.loads((out / "card.json").read_text())
    ft, acc = card["fine_tune"], card["accuracy"]
    assert card["trial"] == trial and card["candidate"] == study.trials[trial].user_attrs["candidate"]
    assert ft["epochs"] == 6 and ft["schedule"] == "cosine" and ft["distilled_from"] is None and ft["sessions"] == 1
    assert ft["kd_alpha"] == 0 and "no base network to distil from" in ft["distillation"]
    assert ft["started_from"].startswith("the weights the search fine-tuned") and ft["devices"][0].startswith("cpu")
    assert acc["validation_before"] == pytest.approx(study.trials[trial].values[0])  # the search's own weights
    assert acc["validation"] > acc["validation_before"] and 0 < acc["test"] <= 1 and acc["test_images"] > 0
    assert card["onnx"]["matches"] and card["versus_base"] is None
    rows = history(out)
    assert [float(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert float(rows[-1]["validation"]) == pytest.approx(acc["validation"])
    md = (out / "card.md").read_text()
    assert "cosine schedule" in md and "→" in md and "finetune.png" in md and (out / "finetune.png").stat().st_size
    model = rebuild(out)
    x, _ = next(load_data("digits", image_size=8).val.batches(32))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - expected).max() <= 1e-4


def test_a_finished_fine_tune_is_not_run_again(blocks, capsys):
    config, _, trial, out = blocks
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["finetune", str(config.run_dir), "--trial", str(trial), "--epochs", EPOCHS, "--out", str(out)]) == 0
    assert "already fine-tuned for 6 epochs" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def started(command: list[str], out: Path, rows: int) -> subprocess.Popen:
    """`slimsearch` in a process of its own, once its history CSV has `rows` rows (waited for, not slept)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "search.cli", *command], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "finetune.csv").is_file() or len(history(out)) < rows:
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    return process


def test_ctrl_c_then_a_kill_then_the_same_command_ends_where_a_straight_run_ends(blocks, tmp_path, capsys):
    config, _, trial, straight = blocks
    out = tmp_path / "killed"
    command = ["finetune", str(config.run_dir), "--trial", str(trial), "--epochs", EPOCHS, "--out", str(out)]
    first = started(command, out, rows=2)  # epoch 0 (the start) and epoch 1 checkpointed
    first.send_signal(signal.SIGINT)
    said = first.communicate(timeout=60)[0]
    assert first.returncode == 130 and "Traceback" not in said and "the same command continues from it" in said
    kept = len(history(out))
    second = started(command, out, rows=kept + 1)  # continued: one more epoch checkpointed
    second.kill()  # SIGKILL, mid-epoch or between epochs
    second.wait(timeout=60)
    killed_at = len(history(out))
    assert main(command) == 0
    assert f"continuing trial #{trial} from epoch {killed_at - 1}" in capsys.readouterr().out
    rows = history(out)
    assert [float(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4, 5, 6]  # no epoch trained twice, none missing
    sessions = [int(r["session"]) for r in rows]
    assert sessions[:kept] == [1] * kept and sessions[killed_at:] == [3] * (len(rows) - killed_at)
    assert json.loads((out / "card.json").read_text())["fine_tune"]["sessions"] == 3
    cut, whole = (torch.load(d / "model.pt", weights_only=True) for d in (out, straight))
    assert all(torch.equal(cut[k], whole[k]) for k in whole), "a continued fine-tune takes the straight one's steps"


def test_a_compression_trial_is_distilled_from_its_base_and_timed_against_it(compress, capsys):
    config, study, tmp = compress
    trial = pick_trial(study, "most-accurate").number
    out = tmp / "ft"
    command = ["finetune", str(config.run_dir), "--trial", str(trial), "--epochs", "1", "--start", "built",
               "--out", str(out), "--no-progress"]
    assert main(command) == 0
    said = capsys.readouterr().out
    assert "distilled from the base network (kd_alpha 0.5" in said and "against the base" in said
    card = json.loads((out / "card.json").read_text())
    ft, versus = card["fine_tune"], card["versus_base"]
    assert ft["distilled_from"] == "the base network" and "BatchNorm recalibrated" in ft["started_from"]
    assert versus["speedup_low"] <= versus["speedup"] <= versus["speedup_high"]  # timed interleaved with the base
    assert card["onnx"]["matches"]
    weights = (out / "model.pt").stat().st_mtime_ns
    assert main([*command, "--force"]) == 0  # asked to: run again from the start
    assert (out / "model.pt").stat().st_mtime_ns != weights and {r["session"] for r in history(out)} == {"1"}


def bad(args: list[str], capsys) -> str:
    """The message of a command that must exit 2 without a traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def test_bad_input_exits_2_naming_what_to_fix_and_writes_nothing(blocks, compress, tmp_path, capsys):
    config, study, trial, straight = blocks
    run_dir, new = str(config.run_dir), tmp_path / "new"
    stamps = {p.name: p.stat().st_mtime_ns for p in straight.iterdir()}
    other = next(t.number for t in study.trials if t.number != trial)
    study.add_trial(create_trial(state=TrialState.FAIL))
    failed = len(study.trials) - 1
    cases = [
        (["--trial", "99", "--epochs", "1"], "--trial 99: study 'digits_blocks' has no such trial"),
        (["--trial", str(failed), "--epochs", "1"], f"--trial {failed}: the trial is fail, not complete"),
        *((["--trial", str(trial), "--epochs", e], "--epochs: expected a finite number of epochs above 0")
          for e in ("0", "-2", "nan", "inf")),
        (["--trial", str(trial), "--epochs", "1", "--kd-alpha", "0.5"], "no base network to distil from"),
        (["--trial", str(other), "--epochs", EPOCHS, "--out", str(straight)],
         f"holds another fine-tune — that of trial #{trial} of study digits_blocks"),
        (["--trial", str(trial), "--epochs", "7", "--out", str(straight)], "epochs: 6.0 there, 7.0 asked"),
        (["--trial", str(trial), "--epochs", EPOCHS, "--lr", "0.01", "--out", str(straight)], "lr: 0.1 there, 0.01"),
    ]
    for args, message in cases:
        out = [] if "--out" in args else ["--out", str(new)]
        assert message in bad(["finetune", run_dir, *args, *out], capsys), args
        assert not new.exists()
    export = tmp_path / "export"
    assert main(["export", run_dir, "--trial", str(trial), "--out", str(export)]) == 0
    assert "holds candidate.json, card.json, card.md, model.onnx, … and no fine-tune" in bad(
        ["finetune", run_dir, "--trial", str(trial), "--epochs", "1", "--out", str(export)], capsys)
    c_config, c_study, c_tmp = compress
    c_trial = str(pick_trial(c_study, "fastest").number)
    assert "that of trial" in bad(["finetune", str(c_config.run_dir), "--trial", c_trial, "--epochs", EPOCHS,
                                   "--out", str(straight)], capsys)  # another run's folder
    moved = c_tmp / "elsewhere.pt"
    shutil.move(c_tmp / "base-ckpt.pt", moved)
    try:
        message = bad(["finetune", str(c_config.run_dir), "--trial", c_trial, "--epochs", "1", "--out", str(new)],
                      capsys)
    finally:
        shutil.move(moved, c_tmp / "base-ckpt.pt")
    assert "space.base.checkpoint:" in message and "put the base checkpoint back" in message and not new.exists()
    assert {p.name: p.stat().st_mtime_ns for p in straight.iterdir()} == stamps
