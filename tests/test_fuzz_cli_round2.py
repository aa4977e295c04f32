"""Bad input, round two: hostile YAML, corrupted files, degenerate data and what only the data or the engine shows,
fed to the real command line. Each must exit with code 2, print no traceback, name the field (or file) at fault and
leave nothing behind that it created. Run directories (damaged, copied) and signals are in tests/test_fuzz_run_dirs.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from PIL import Image

from search.cli import main
from spaces.compress.nets import tiny_resnet
from tests.conftest import tiny_recipe
from tests.test_fuzz_cli import _check, _write, argv, compress, compress_recipe, recipe, with_set

pytestmark = pytest.mark.timeout(300)  # a hang (what an alias bomb did) fails the test instead of the suite

Case = tuple[str, Callable[[Path], list[str]], str]
GROUPS = ["stem.0", "stages.0.0.conv1", "stages.1.0.conv1", "stages.1.0.conv2", "stages.2.0.conv1",
          "stages.2.0.conv2"]  # every prunable group of the tiny compression recipe's base


def bomb(key: str, levels: int = 9) -> str:
    """A few hundred bytes of YAML whose aliases expand to 9**levels values ("billion laughs")."""
    lines = [f"{key}:", "  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def flow_bomb(levels: int = 8) -> str:
    """The same in one line of flow YAML (a `--set` value)."""
    parts = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    parts += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "{" + ", ".join(parts) + "}"


def yaml_text(body: str, command: str = "validate", space: str = "") -> Callable[[Path], list[str]]:
    """`command` of a recipe written as raw YAML text; `{recipe}` is the tiny recipe's text (with `space` text added
    under its `space:`), `{tmp}` the folder."""

    def args(tmp: Path) -> list[str]:
        lines = yaml.safe_dump(tiny_recipe(tmp), sort_keys=False).replace("space:\n", "space:\n" + space, 1)
        return [command, str(_write(tmp, body.replace("{recipe}", lines).replace("{tmp}", str(tmp))))]

    return args


def compressed(command: str = "run", **changes: Any) -> Callable[[Path], list[str]]:
    """`command` of the tiny compression recipe with `changes`, `{tmp}` in a value being the test's folder."""

    def args(tmp: Path) -> list[str]:
        raw = compress(**{k: v.replace("{tmp}", str(tmp)) if isinstance(v, str) else v for k, v in changes.items()})
        raw["output_dir"] = str(tmp / "runs")
        return [command, str(_write(tmp, raw))]

    return args


def with_file(make: Callable[[Path], Any], command: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    """`command` after `make(tmp)` wrote the file (a checkpoint, an image folder) it names."""

    def args(tmp: Path) -> list[str]:
        make(tmp)
        return command(tmp)

    return args


def checkpoint(content: Callable[[], Any] | bytes) -> Callable[[Path], list[str]]:
    """`run` of the tiny compression recipe from a checkpoint file holding `content` (torch.save'd, or raw bytes)."""

    def make(tmp: Path) -> None:
        path = tmp / "weights.pt"
        path.write_bytes(content) if isinstance(content, bytes) else torch.save(content(), path)

    return with_file(make, compressed(**{"space.base.checkpoint": "{tmp}/weights.pt"}))


def truncated_checkpoint() -> bytes:
    """The first 300 bytes of a real state dict: a damaged download."""
    import io

    buffer = io.BytesIO()
    torch.save(tiny_resnet(widths=(8, 16, 32)).state_dict(), buffer)
    return buffer.getvalue()[:300]


def image_folder(classes: list[str], per_class: int) -> Callable[[Path], None]:
    """Write `{tmp}/images/{train,test}/<class>/` with `per_class` tiny grey images each."""

    def make(tmp: Path) -> None:
        for split in ("train", "test"):
            for name in classes:
                folder = tmp / "images" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    Image.new("L", (8, 8), 10 * i).save(folder / f"{i}.png")

    return make


IMAGES = ("data.dataset=imagefolder", "data.root={tmp}/images")


def damaged_base(tmp: Path) -> None:
    """A base.pt cut short in the run directory the tiny compression recipe trains its base in."""
    (tmp / "runs" / "digits_blocks").mkdir(parents=True)
    (tmp / "runs" / "digits_blocks" / "base.pt").write_bytes(b"PK\x03\x04 cut short")


def binary_recipe(tmp: Path) -> list[str]:
    (tmp / "bad.yaml").write_bytes(b"name: \xff\xfe\x00\x01 binary\n")
    return ["validate", str(tmp / "bad.yaml")]


def fifo_recipe(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "pipe.yaml")
    return ["validate", str(tmp / "pipe.yaml")]


ISSUE_CASES: list[Case] = [  # issue 36, each as reported
    ("yaml-bomb-validate", yaml_text("{recipe}" + bomb("lol")), "lol.a"),
    ("yaml-bomb-run", yaml_text(bomb("lol") + "{recipe}", command="run"), "lol.a"),
    ("checkpoint-list", checkpoint(lambda: [1, 2, 3]), "space.base.checkpoint"),
    ("latency-greedy-no-table", compress_recipe(**{"space.policy": ["latency_greedy"]}), "space.policy"),
    ("expand-ratio-0", recipe(**{"space.options": {"mbconv": {"expand_ratio": [0, 3]}}}),
     "space.options.mbconv.expand_ratio"),
    ("expand-ratio-negative", recipe(**{"space.options": {"mbconv": {"expand_ratio": [-1.5]}}}),
     "space.options.mbconv.expand_ratio"),
    ("one-class", with_file(image_folder(["cat"], 6), with_set(*IMAGES, command="run")), "holds images"),
    ("exclude-everything", compress_recipe("run", **{"space.exclude": GROUPS}), "space.exclude"),
    ("epochs-1e-9", with_set("train.epochs=1e-9", command="run"), "train.epochs"),
    ("recipe-folder", argv("validate", "{tmp}"), "a folder"),
    ("latency-folder", argv("latency", "{tmp}"), "a folder"),
    ("checkpoint-other-architecture", checkpoint(lambda: tiny_resnet(widths=(16, 32, 64)).state_dict()),
     "space.base.checkpoint"),
    ("int8-on-torch", compress_recipe("run", **{"latency.backend": "torch", "space.precision": ["fp32", "int8"]}),
     "space.precision"),
    ("model-os-system", compress_recipe(**{"space.base.model": "os:system"}), "space.base.model"),
]

OWN_CASES: list[Case] = [
    # hostile YAML
    ("alias-loop", yaml_text("{recipe}extra: &r [*r]\n"), "extra.0"),
    ("alias-loop-mapping", yaml_text("{recipe}extra: &r {a: *r}\n"), "extra.a"),
    ("nesting-100", yaml_text("{recipe}extra: " + "[" * 100 + "]" * 100 + "\n"), "extra.0"),
    ("nesting-5000", yaml_text("{recipe}extra: " + "[" * 5000 + "]" * 5000 + "\n"), "nested"),
    ("bomb-in-space", yaml_text("{recipe}", command="run", space="  " + bomb("kwargs").replace("\n", "\n  ")),
     "space.kwargs.a"),
    ("set-alias-loop", with_set("space.stem_width=&a [*a]"), "--set"),
    ("set-bomb", with_set("space.stem_width=" + flow_bomb()), "--set"),
    ("python-tag", yaml_text("!!python/object/apply:os.system ['touch {tmp}/pwned']\n"), "python/object"),
    ("two-documents", yaml_text("{recipe}---\nname: other\n"), "single document"),
    ("empty-recipe", yaml_text(""), "empty"),
    ("binary-recipe", binary_recipe, "not text"),
    ("recipe-pipe", fifo_recipe, "not a regular file"),
    # corrupted files
    ("onnx-garbage", with_file(lambda tmp: (tmp / "m.onnx").write_text("garbage"), argv("latency", "{tmp}/m.onnx")),
     "m.onnx"),
    ("checkpoint-tensor", checkpoint(lambda: torch.zeros(3)), "space.base.checkpoint"),
    ("checkpoint-empty-dict", checkpoint(dict), "space.base.checkpoint"),
    ("checkpoint-int-keys", checkpoint(lambda: {1: torch.zeros(1)}), "space.base.checkpoint"),
    ("checkpoint-truncated", checkpoint(truncated_checkpoint()), "space.base.checkpoint"),
    ("checkpoint-folder", compressed(**{"space.base.checkpoint": "{tmp}"}), "space.base.checkpoint"),
    ("base-pt-damaged", with_file(damaged_base, compress_recipe("run")), "base.pt"),
    # degenerate data and trainings that train nothing
    ("no-image-to-score", with_file(image_folder(["a", "b"], 1), with_set(*IMAGES, command="run")),
     "data.val_fraction"),
    ("one-image-one-step", with_set("train.max_train_samples=1", "train.epochs=0.4", command="run"), "train.epochs"),
    ("rung-below-a-step", with_set("search.fidelity={rungs: [0.001, 0.5]}", command="run"),
     "search.fidelity.rungs.0"),
    ("base-below-a-step", compress_recipe("run", **{"space.base.epochs": 1e-5}), "space.base.epochs"),
    ("kernel-even", recipe(**{"space.options": {"conv": {"kernel_size": [3, 4]}}}), "space.options.conv.kernel_size"),
    ("kernel-text", recipe(**{"space.options": {"dwsep": {"kernel_size": ["big"]}}}),
     "space.options.dwsep.kernel_size"),
    ("kernel-float", recipe(**{"space.options": {"conv": {"kernel_size": [3.0]}}}), "space.options.conv.kernel_size"),
    ("bypass-number", recipe(**{"space.options": {"fire": {"bypass": [1]}}}), "space.options.fire.bypass"),
    ("groups-fraction", recipe(**{"space.options": {"shuffle": {"groups": [1.5]}}}), "space.options.shuffle.groups"),
    ("squeeze-0", recipe(**{"space.options": {"fire": {"squeeze_ratio": [0]}}}), "space.options.fire.squeeze_ratio"),
    ("reduction-0", recipe(**{"space.options": {"bottleneck": {"reduction": [0]}}}),
     "space.options.bottleneck.reduction"),
    # recipes are code: what cannot build a network is never called
    ("model-subprocess", compress_recipe(**{"space.base.model": "subprocess:run"}), "space.base.model"),
    ("model-builtin", compress_recipe("run", **{"space.base.model": "torch:zeros"}), "space.base.model"),
    ("model-not-a-module", compress_recipe("run", **{"space.base.model": "spaces.compress.errors:CompressError"}),
     "space.base.model"),
    ("model-annotated-str", compress_recipe("run", **{"space.base.model": "spaces.compress.models:fingerprint"}),
     "space.base.model"),
]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.mark.parametrize("make_args, field", [c[1:] for c in ISSUE_CASES + OWN_CASES],
                         ids=[c[0] for c in ISSUE_CASES + OWN_CASES])
def test_bad_input_exits_2_naming_the_field_and_leaves_nothing(tmp_path, capsys, monkeypatch, make_args, field):
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in make_args(tmp_path)]
    before = _tree(tmp_path / "runs")
    code = main(args)
    _check(code, capsys.readouterr().err, field)
    assert _tree(tmp_path / "runs") == before, "a failed start left something behind"
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_of_another_architecture_is_summed_up_not_listed(tmp_path, capsys):
    torch.save(tiny_resnet(widths=(16, 32, 64)).state_dict(), tmp_path / "wide.pt")
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "other.pt")
    for name, said in (("wide", "46 of another shape"), ("other", "55 of the model's 56 keys missing")):
        assert main(compress_recipe("run", **{"space.base.checkpoint": str(tmp_path / f"{name}.pt")})(tmp_path)) == 2
        err = capsys.readouterr().err
        assert said in err and "more)" in err and len(err) < 1000, err


def test_a_recipe_cannot_make_the_study_run_a_shell_command(tmp_path, capsys):
    marker = tmp_path / "pwned"
    raw = compress(**{"space.base.model": "os:system", "space.base.kwargs": {"command": f"touch {marker}"}})
    raw["output_dir"] = str(tmp_path / "runs")
    for command in ("validate", "run"):
        assert main([command, str(_write(tmp_path, raw))]) == 2
        _check(2, capsys.readouterr().err, "space.base.model")
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_a_timeout_counts_the_preparation(tmp_path, capsys):
    raw = compress(**{"space.base.epochs": 2, "search.trials": 2})
    raw["output_dir"] = str(tmp_path / "runs")
    assert main(["run", str(_write(tmp_path, raw)), "--timeout", "0.01", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--timeout 0.01 s passed while the study prepared" in err and "no trial started" in err


def test_there_are_the_issues_cases_and_twenty_more():
    assert len(ISSUE_CASES) >= 14 and len(OWN_CASES) >= 20
