"""Study recipes: YAML validated into a typed config, with `--set key=value` overrides."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from registry import UnknownName
from search.errors import ConfigError
from search.sections import ConstraintsConfig, DataConfig, LatencyConfig, SearchConfig, Section, TrainConfig
from spaces import SPACES, get_space


class StudyConfig(Section):
    """A whole study recipe. `name` names the study and its run directory."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = 0
    output_dir: str = Field("runs", description="parent folder of the run directory")
    storage: str | None = Field(None, description="Optuna storage URL (default: SQLite in the run directory)")
    space: Any
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)

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

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def dump(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what is frozen into the run directory)."""
        out = self.model_dump(mode="json")
        out["space"] = self.space.model_dump(mode="json")
        return out


def _format_errors(source: str, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = prefix + ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the recipe reference in the README)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
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
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
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


def validate_config(raw: Any, source: str = "recipe") -> StudyConfig:
    """Validate plain data into a StudyConfig; every problem is reported in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of keys to values, got {type(raw).__name__}")
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
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read a YAML recipe, apply overrides and validate it; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML recipe (it is not text)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, str(path))
