"""Malformed recipes and arguments, fed to the real command line: each must exit with code 2, print no traceback,
name the field (or flag) at fault, and leave no run directory behind."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from search.cli import main
from tests.conftest import ROOT, set_dotted, tiny_recipe

Case = tuple[str, Callable[[Path], list[str]], str]


def _write(tmp_path: Path, raw: Any, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def recipe(**changes: Any) -> Callable[[Path], list[str]]:
    """`validate` of the tiny digits recipe with dotted-key `changes`."""
    return lambda tmp: ["validate", str(_write(tmp, tiny_recipe(tmp, **changes)))]


def compress(**changes: Any) -> dict[str, Any]:
    """A tiny compression recipe: a small ResNet trained in the study, with dotted-key `changes`."""
    raw = tiny_recipe(Path("unused"))
    raw["space"] = {"type": "compress", "base": {"model": "spaces.compress.nets:tiny_resnet",
                                                  "kwargs": {"widths": [8, 16, 32]}, "epochs": 1}}
    return set_dotted(raw, changes)


def compress_recipe(command: str = "validate", **changes: Any) -> Callable[[Path], list[str]]:
    """`command` (validate or run) on the tiny compression recipe with `changes`."""

    def args(tmp: Path) -> list[str]:
        raw = compress(**changes)
        raw["output_dir"] = str(tmp / "runs")
        return [command, str(_write(tmp, raw))]

    return args


def text(body: str) -> Callable[[Path], list[str]]:
    """`validate` of a recipe written as raw YAML text (what `yaml.safe_dump` cannot write)."""

    def args(tmp: Path) -> list[str]:
        lines = yaml.safe_dump(tiny_recipe(tmp), sort_keys=False)
        return ["validate", str(_write(tmp, body.replace("{recipe}", lines).replace("{tmp}", str(tmp))))]

    return args


def edited(old: str, new: str) -> Callable[[Path], list[str]]:
    """`validate` of the tiny recipe's YAML text with `old` replaced by `new` (a number as the user types it)."""

    def args(tmp: Path) -> list[str]:
        body = yaml.safe_dump(tiny_recipe(tmp), sort_keys=False)
        assert old in body
        return ["validate", str(_write(tmp, body.replace(old, new)))]

    return args


def with_set(*overrides: str, command: str = "validate") -> Callable[[Path], list[str]]:
    """`command` of the tiny recipe with `--set` overrides (`{tmp}` is the test's folder)."""

    def args(tmp: Path) -> list[str]:
        out = [command, str(_write(tmp, tiny_recipe(tmp)))]
        for item in overrides:
            out += ["--set", item.replace("{tmp}", str(tmp))]
        return out

    return args


def argv(*words: str) -> Callable[[Path], list[str]]:
    """A command line; `{recipe}` is the tiny recipe, `{tmp}` the test's folder."""

    def args(tmp: Path) -> list[str]:
        path = _write(tmp, tiny_recipe(tmp), "ok.yaml")
        return [w.replace("{recipe}", str(path)).replace("{tmp}", str(tmp)) for w in words]

    return args


def text_checkpoint(tmp: Path) -> list[str]:
    notes = tmp / "weights.pt"
    notes.write_text("these are not weights\n")
    return compress_recipe(**{"space.base.checkpoint": str(notes)})(tmp)


CASES: list[Case] = [
    ("seed-huge", recipe(seed=1180591620717411303424), "seed"),
    ("seed-negative", recipe(seed=-5), "seed"),
    ("seed-text", recipe(seed="abc"), "seed"),
    ("seed-fraction", recipe(seed=1.5), "seed"),
    ("seed-bool", recipe(seed=True), "seed"),
    ("output-dir-proc", recipe(output_dir="/proc/fz"), "output_dir"),
    ("output-dir-file", recipe(output_dir=str(ROOT / "README.md")), "output_dir"),
    ("epochs-inf", recipe(**{"train.epochs": float("inf")}), "train.epochs"),
    ("lr-inf", recipe(**{"train.lr": float("inf")}), "train.lr"),
    ("lr-nan", recipe(**{"train.lr": float("nan")}), "train.lr"),
    ("max-seconds-inf", recipe(**{"latency.max_seconds": float("inf")}), "latency.max_seconds"),
    ("budget-inf", recipe(**{"latency.budget_ms": float("-inf")}), "latency.budget_ms"),
    ("epochs-1e9", edited("epochs: 0.5", "epochs: 1e9"), "train.epochs"),
    ("set-epochs-1e9", with_set("train.epochs=1e9"), "train.epochs"),
    ("epochs-true", recipe(**{"train.epochs": True}), "train.epochs"),
    ("trials-true", recipe(**{"search.trials": True}), "search.trials"),
    ("width-bool", recipe(**{"space.stages": [{"stride": 1, "width": [8, True]}]}), "space.stages.0.width"),
    ("batch-huge", recipe(**{"train.batch_size": 10**12}), "train.batch_size"),
    ("latency-batch-huge", recipe(**{"latency.batch_size": 10**9}), "latency.batch_size"),
    ("latency-threads-0", recipe(**{"latency.threads": 0}), "latency.threads"),
    ("trials-huge", recipe(**{"search.trials": 10**9}), "search.trials"),
    ("heartbeat-huge", recipe(**{"search.heartbeat_interval": 10**7}), "search.heartbeat_interval"),
    ("width-1e9", with_set("space.stages.0.width=[8, 1e9]"), "space.stages.0.width"),
    ("width-huge", recipe(**{"space.stages": [{"stride": 1, "width": [8, 10**9]}]}), "space.stages.0.width"),
    ("depth-huge", recipe(**{"space.stages": [{"stride": 1, "width": [8, 16], "depth": [1, 1000]}]}),
     "space.stages.0.depth"),
    ("stem-huge", recipe(**{"space.stem_width": [8, 100000]}), "space.stem_width"),
    ("head-huge", recipe(**{"space.head_width": 10**6}), "space.head_width"),
    ("round-to-0", recipe(**{"space.round_to": 0}), "space.round_to"),
    ("crelu-odd", recipe(**{"space.blocks": ["crelu"], "space.round_to": 1, "space.stem_width": [3, 5],
                            "space.stages": [{"width": [3, 5]}]}), "space"),
    ("unknown-block", recipe(**{"space.blocks": ["nope"]}), "space.blocks"),
    ("image-size-huge", recipe(**{"data.image_size": 100000}), "data.image_size"),
    ("val-fraction", recipe(**{"data.val_fraction": 1.5}), "data.val_fraction"),
    ("accuracy-2", recipe(**{"constraints.accuracy": 2}), "constraints.accuracy"),
    ("momentum-1", recipe(**{"train.momentum": 1}), "train.momentum"),
    ("device-tpu", recipe(**{"train.device": "tpu"}), "train.device"),
    ("sampler-grid", recipe(**{"search.sampler": "grid"}), "search.sampler"),
    ("eta-inf", recipe(**{"search.fidelity": {"rungs": [1, 0.5], "eta": float("inf")}}), "search.fidelity.eta"),
    ("name-path", recipe(name="../evil"), "name"),
    ("name-twice", text("name: first\n{recipe}"), "name"),
    ("key-twice-nested", edited("  lr: 0.1\n", "  lr: 0.1\n  lr: 0.2\n"), "lr"),
    ("space-type", recipe(**{"space.type": "galaxy"}), "space.type"),
    ("typo-key", recipe(**{"search.samplr": "tpe"}), "search.samplr"),
    ("not-a-mapping", text("- just\n- a list\n"), "mapping"),
    ("not-yaml", text("name: [unclosed\n"), "not valid YAML"),
    ("set-inf", with_set("train.lr=.inf"), "train.lr"),
    ("set-true", with_set("train.epochs=true"), "train.epochs"),
    ("set-no-equals", with_set("train.lr"), "--set"),
    ("no-recipe", argv("validate", "{tmp}/nope.yaml"), "no such recipe file"),
    ("checkpoint-text", text_checkpoint, "space.base.checkpoint"),
    ("base-epochs-1e9", compress_recipe(**{"space.base.epochs": 1e9}), "space.base.epochs"),
    ("base-lr-inf", compress_recipe(**{"space.base.lr": float("inf")}), "space.base.lr"),
    ("keep-range", compress_recipe(**{"space.keep": [0, 2]}), "space.keep"),
    ("sparsity-inf", compress_recipe(**{"space.base.sparsity": {"l1": float("inf")}}), "space.base.sparsity.l1"),
    ("exclude-unknown", compress_recipe("run", **{"space.exclude": ["no.such.layer"]}), "space.exclude"),
    ("data-root-missing", with_set("data.dataset=cifar10", "data.root=/nonexistent/data", command="run"),
     "data.root"),
    ("storage-bad", argv("run", "{recipe}", "--storage", "nosuchdb://x/y"), "storage"),
    ("table-missing", with_set("latency.table={tmp}/nope.json", "latency.budget_ms=1", command="run"), "nope.json"),
    ("status-not-run", argv("status", "{tmp}"), "not a run directory"),
    ("export-not-run", argv("export", "{tmp}", "--trial", "0", "--out", "{tmp}/out"), "not a run directory"),
    ("finetune-not-run", argv("finetune", "{tmp}", "--trial", "0", "--epochs", "1", "--out", "{tmp}/out"),
     "not a run directory"),
    ("finetune-epochs-nan", argv("finetune", "{tmp}", "--pick", "knee", "--epochs", "nan", "--out", "{tmp}/out"),
     "--epochs"),
]

if not torch.cuda.is_available():
    CASES.append(("device-cuda", with_set("train.device=cuda", command="run"), "train.device"))
if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
    CASES.append(("backend-tensorrt", with_set("latency.backend=tensorrt", command="run"), "latency.backend"))

ARGPARSE_CASES: list[Case] = [
    ("trials-0", argv("run", "{recipe}", "--trials", "0"), "--trials"),
    ("workers-text", argv("run", "{recipe}", "--workers", "many"), "--workers"),
    ("port-huge", argv("dashboard", "{tmp}", "--port", "70000"), "--port"),
    ("finetune-epochs-text", argv("finetune", "{tmp}", "--trial", "0", "--epochs", "many"), "--epochs"),
    ("no-command", argv(), "COMMAND"),
]


def _check(code: int, err: str, field: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert field in err, err


@pytest.mark.parametrize("make_args, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_exits_2_naming_the_field(tmp_path, capsys, make_args, field):
    args = make_args(tmp_path)
    code = main(args)
    _check(code, capsys.readouterr().err, field)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), f"a failed start left {list(runs.iterdir())}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make_args, field", [c[1:] for c in ARGPARSE_CASES], ids=[c[0] for c in ARGPARSE_CASES])
def test_malformed_arguments_exit_2_naming_the_flag(tmp_path, capsys, make_args, field):
    with pytest.raises(SystemExit) as stop:
        main(make_args(tmp_path))
    _check(stop.value.code, capsys.readouterr().err, field)


SUBPROCESS = ["seed-huge", "name-twice", "epochs-true", "width-1e9", "trials-0"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_the_installed_command_line_gives_the_same_answer(tmp_path, name):
    _, make_args, field = next(c for c in CASES + ARGPARSE_CASES if c[0] == name)
    proc = subprocess.run([sys.executable, "-m", "search.cli", *make_args(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    _check(proc.returncode, proc.stderr, field)


def test_there_are_enough_cases():
    assert len(CASES) + len(ARGPARSE_CASES) >= 40
