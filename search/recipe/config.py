"""Study recipes: YAML validated into a typed config, with `--set key=value` overrides."""

from __future__ import annotations

import copy
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from registry import UnknownName
from search.errors import ConfigError, file_problem
from search.recipe.sections import ConstraintsConfig, DataConfig, LatencyConfig, SearchConfig, Section, TrainConfig
from search.recipe.yamlfile import read_yaml
from spaces import SPACES, get_space
from spaces.compress.config import GREEDY_POLICIES

MAX_SEED = 2**32 - 1  # NumPy's and Optuna's samplers take seeds up to this


class StudyConfig(Section):
    """A whole study recipe. `name` names the study and its run directory."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the sampler and the training; 0 to 2**32 - 1")
    output_dir: str = Field("runs", description="parent folder of the run directory")
    storage: str | None = Field(None, description="Optuna storage URL (default: SQLite in the run directory)")
    space: Any
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)
    _located: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _top_rung_is_the_fine_tune(self) -> "StudyConfig":
        fidelity = self.search.fidelity
        if fidelity is not None and fidelity.rungs[-1] != self.train.epochs:
            raise ValueError(
                f"search.fidelity.rungs ends at {fidelity.rungs[-1]:g} epochs but train.epochs is "
                f"{self.train.epochs:g}: the top rung is the whole fine-tune, so make them equal"
            )
        return self

    @model_validator(mode="after")
    def _speedup_needs_a_base(self) -> "StudyConfig":
        space_type = self.space.get("type") if isinstance(self.space, dict) else getattr(self.space, "type", None)
        if self.constraints.speedup is not None and space_type != "compress":
            raise ValueError(
                "constraints.speedup is measured against a base network, which only a compress study has; use "
                "constraints.latency_ms"
            )
        return self

    @model_validator(mode="after")
    def _latency_greedy_needs_a_table(self) -> "StudyConfig":
        policy = self.space.get("policy") if isinstance(self.space, dict) else getattr(self.space, "policy", None)
        greedy = [p for p in policy if p in GREEDY_POLICIES] if isinstance(policy, list) else []
        if greedy and self.latency.table is None:
            raise ValueError(
                f"space.policy: {greedy[0]} removes the channels that save the most predicted latency, so it needs "
                "a latency table to predict with: set latency.table (see `slimsearch lut build`), or leave "
                f"{' and '.join(greedy)} out"
            )
        return self

    @property
    def run_dir(self) -> Path:
        """The run directory: where it was found (`locate`), else `output_dir/name`."""
        return self._located or Path(self.output_dir) / self.name

    def locate(self, run_dir: Path) -> None:
        """Take the run directory to be `run_dir`, wherever it was copied or moved to (it keeps its study's name)."""
        self._located = Path(run_dir)

    def dump(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what is frozen into the run directory)."""
        out = self.model_dump(mode="json")
        out["space"] = self.space.model_dump(mode="json")
        return out


def _format_errors(source: str, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = (prefix + ".".join(str(p) for p in err["loc"])).rstrip(".")
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"] and re.match(r"[a-z_]+\.[\w.]+[: ]", msg):  # a check across keys names its key first
            lines.append(prefix + msg)
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the recipe reference in the README)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        quiet = (err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) or "got " in msg
                 or (isinstance(got, str) and got in msg))
        shown = "" if quiet else f" (got {got!r})"
        lines.append(f"{loc or '(top level)'}: {msg}{shown}")
    return f"{source}: invalid recipe\n  " + "\n  ".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML (numbers, lists, null), and a
    numeric part indexes a list (`space.stages.0.width=[8, 16]`)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set search.trials=10")
        key, value = item.split("=", 1)
        parts = [p for p in re.split(r"\.", key.strip()) if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            parsed = read_yaml(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
        node: Any = out
        for depth, p in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(
                        f"--set {item!r}: {'.'.join(parts[:depth]) or 'the recipe'} is a list of {len(node)}; "
                        f"index it with 0..{len(node) - 1}"
                    )
                p = int(p)
            elif not isinstance(node.get(p), (dict, list)) and not last:
                node[p] = {}
            if last:
                node[p] = parsed
            else:
                node = node[p]
    return out


def _leaves(data: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (path, leaf) of nested dicts and lists; list items are numbered."""
    if isinstance(data, dict):
        return [leaf for k, v in data.items() for leaf in _leaves(v, (*path, str(k)))]
    if isinstance(data, (list, tuple)):
        return [leaf for i, v in enumerate(data) for leaf in _leaves(v, (*path, str(i)))]
    return [(path, data)]


def _show_path(path: tuple[str, ...]) -> str:
    return ".".join(path) or "(top level)"


def non_finite_numbers(raw: Any) -> list[str]:
    """A line for every infinite or NaN number in a recipe: no key of any section takes one."""
    return [f"{_show_path(path)}: expected a finite number, got {value}"
            for path, value in _leaves(raw) if isinstance(value, float) and not math.isfinite(value)]


def _at(data: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` in nested dicts and lists, or KeyError."""
    for part in path:
        if isinstance(data, dict):
            data = data[part]
        elif isinstance(data, (list, tuple)) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            raise KeyError(part)
    return data


def booleans_as_numbers(raw: Any, resolved: Any) -> list[str]:
    """A line for every `true` / `false` of the recipe that validation turned into a number (pydantic reads
    `epochs: true` as 1): a number must be written as one."""
    out = []
    for path, value in _leaves(raw):
        if isinstance(value, bool):
            try:
                now = _at(resolved, path)
            except KeyError:
                continue
            if not isinstance(now, bool):
                out.append(f"{_show_path(path)}: expected a number, got {str(value).lower()}; write it as a number")
    return out


def writable_parent(output_dir: str) -> str | None:
    """Why run directories cannot be created under `output_dir` (None where they can): its nearest existing
    folder must be one this process can create folders in, which is tried with a temporary folder."""
    path = Path(output_dir).expanduser().absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".slimsearch-", dir=path))
    except OSError as exc:
        return f"cannot create folders in {path} ({exc.strerror or exc})"
    return None


def validate_config(raw: Any, source: str = "recipe") -> StudyConfig:
    """Validate plain data into a StudyConfig; every problem is reported in one ConfigError."""
    if raw is None:
        raise ConfigError(f"{source}: the recipe is empty; write its keys, as in studies/digits_blocks.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of keys to values, got {type(raw).__name__}")
    bad = non_finite_numbers(raw)
    if bad:
        raise ConfigError(f"{source}: invalid recipe\n  " + "\n  ".join(bad))
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    space_raw = config.space
    if not isinstance(space_raw, dict) or "type" not in space_raw:
        raise ConfigError(f"{source}: space.type: required; known spaces: {', '.join(sorted(SPACES))}")
    try:
        space_cls = get_space(space_raw["type"])
    except UnknownName as exc:
        raise ConfigError(f"{source}: space.type: {exc}") from None
    try:
        config.space = space_cls.Config.model_validate(space_raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc, prefix="space.")) from None
    bad = booleans_as_numbers(raw, config.dump())
    if bad:
        raise ConfigError(f"{source}: invalid recipe\n  " + "\n  ".join(bad))
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read a YAML recipe, apply overrides and validate it; errors name the file and the field."""
    path = Path(path)
    why = file_problem(path)
    if why:
        raise ConfigError(f"{path}: {'no such recipe file' if why == 'no such file' else why}; expected a YAML recipe")
    try:
        raw = read_yaml(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML recipe (it is not text)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides or [])
    config = validate_config(raw, str(path))
    why = writable_parent(config.output_dir)
    if why:
        raise ConfigError(f"{path}: output_dir: {why}; write a folder this user can create run directories in, "
                          "e.g. output_dir: runs")
    return config
