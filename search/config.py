"""Study recipes: YAML validated into a typed config, with `--set key=value` overrides."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluators.data import DATASETS
from evaluators.latency import BACKENDS
from evaluators.train import resolve_device
from registry import Registry, UnknownName
from search.errors import ConfigError, UsageError
from spaces import SPACES, get_space


def known(registry: Registry[Any], name: str, alternative: str = "") -> None:
    """A validator's check that `name` is registered: ValueError with the registry's message otherwise."""
    try:
        registry[name]
    except UnknownName as exc:
        raise ValueError(f"{exc}{' (' + alternative + ')' if alternative else ''}") from None


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    """Recipe section `data:`: which images, at what size, and how many are held out to score candidates."""

    dataset: str = Field("digits", description="digits, or a dataset read from data.root")
    root: str | None = Field(None, description="local folder for datasets that are not bundled")
    image_size: int | None = Field(None, ge=4, le=1024, description="resize images to this side (None: native)")
    val_fraction: float = Field(0.2, gt=0, lt=0.9, description="share of training images held out to score candidates")

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        known(DATASETS, value)
        return value


class TrainConfig(Section):
    """Recipe section `train:`: the quick fine-tune every candidate gets before it is scored."""

    epochs: float = Field(3.0, gt=0, description="fine-tune length in epochs (fractions allowed)")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    max_train_samples: int | None = Field(None, ge=1, description="train on at most this many images per trial")
    max_eval_samples: int | None = Field(None, ge=1, description="score on at most this many validation images")
    threads: int = Field(0, ge=0, description="torch threads for training (0: all cores)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where fine-tunes run: auto is the CUDA GPU where torch sees one, else the CPU"
    )
    kd_alpha: float = Field(0.0, ge=0, le=1, description="weight of distillation from the base (compress space)")
    kd_temperature: float = Field(4.0, gt=0, description="softmax temperature of the distillation loss")
    bn_batches: int = Field(
        20, ge=0, description="training batches that recalibrate BatchNorm before a compressed candidate's fine-tune"
    )

    def resolved_device(self) -> str:
        """`device` resolved to cpu or cuda; a GPU asked for where there is none is a UsageError."""
        try:
            return resolve_device(self.device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None


class LatencyConfig(Section):
    """Recipe section `latency:`: the engine, precision and batch that latency is measured with."""

    backend: str = Field("auto", description="auto, onnxruntime, tensorrt or torch")
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    batch_size: int = Field(1, ge=1)
    threads: int = Field(1, ge=1, description="CPU threads the engine may use")
    max_seconds: float = Field(3.0, gt=0, description="time cap for the timed rounds of one model")
    target_cv: float = Field(0.02, gt=0, description="stop timing once round medians vary less than this")
    cuda_graph: bool = Field(
        True, description="on a GPU, time replays of a CUDA graph of the forward (false: plain launches)"
    )
    table: str | None = Field(None, description="latency table (JSON from `slimsearch lut build`) to predict with")
    budget_ms: float | None = Field(
        None, gt=0, description="skip, untrained, a candidate the latency table predicts slower than this"
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != "auto":
            known(BACKENDS, value, "or auto")
        return value

    @model_validator(mode="after")
    def _budget_needs_table(self) -> "LatencyConfig":
        if self.budget_ms is not None and self.table is None:
            raise ValueError(
                "budget_ms needs a latency table to predict with: set latency.table (see `slimsearch lut build`)"
            )
        return self


class SearchConfig(Section):
    """Recipe section `search:`: the sampler and the trial budget."""

    sampler: Literal["tpe", "gp", "nsga2", "random"] = "tpe"
    trials: int = Field(30, ge=1, description="completed trials to reach")
    timeout: float | None = Field(None, gt=0, description="stop starting new trials after this many seconds")
    startup_trials: int = Field(10, ge=0, description="random trials before TPE or GP models the space")
    population_size: int = Field(16, ge=2, description="NSGA-II population")
    anchors: int = Field(
        3, ge=0, description="compress space: uniform policies evaluated first, at this many keep ratios per precision"
    )
    max_consecutive_failures: int = Field(5, ge=1, description="stop the study after this many failed trials in a row")
    heartbeat_interval: int = Field(
        10, ge=1, description="seconds between a running trial's heartbeats; a trial silent for 3 intervals is retried"
    )


class ConstraintsConfig(Section):
    """Limits a candidate must meet to be feasible; infeasible trials are never on the front."""

    latency_ms: float | None = Field(None, gt=0, description="maximum median latency in milliseconds")
    params: int | None = Field(None, ge=1, description="maximum number of parameters")
    accuracy: float | None = Field(None, ge=0, le=1, description="minimum validation accuracy")


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
