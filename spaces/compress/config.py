"""The recipe section of the `compress` space (`space:` with `type: compress`): the base network, its optional
sparsity training, and the ranges of the policies searched."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from spaces.compress.models import stdlib_module

GREEDY_POLICIES = ("latency_greedy", "greedy_local")  # policies the latency greedy makes (they need a table)
LOCAL_MOVES = 6  # greedy_local: at most this many random moves away from the greedy policy
LOCAL_SEEDS = 2**20  # greedy_local: the moves are drawn from one of this many seeds, kept in the candidate

SPARSITY_KEYS = {"l1": "λ or a list of λ", "epochs": "at least 1", "lr": "peak learning rate"}


CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save writes a zip archive (legacy: a pickle)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be a checkpoint written by `torch.save` (None where it may be): it is not a file, or starts
    with neither a zip archive's nor a pickle's magic bytes (a text file, an ONNX model). A missing file is left to
    the loading, so a run directory whose checkpoint has moved can still be inspected."""
    if not path.exists():
        return None
    if not path.is_file():
        return "not a file"
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        return f"not readable ({exc.strerror or exc})"
    if not head.startswith(CHECKPOINT_MAGIC):
        return "not a PyTorch checkpoint (it is neither a zip archive nor a pickle)"
    return None


class SparsityConfig(BaseModel):
    """Recipe section `space.base.sparsity:`: Network Slimming's sparsity training of the base before the study —
    `epochs` more of training with λ·Σ|γ| on every BatchNorm scale, one sparsity-trained base per λ."""

    model_config = ConfigDict(extra="forbid")

    l1: float | list[float] = Field(description="λ, the weight of the L1 penalty on BatchNorm scales; a list: one "
                                                "sparsity-trained base per λ, and the study searches which to cut")
    epochs: float = Field(5.0, le=1000, description="epochs of sparsity training, at least 1")
    lr: float = Field(0.01, gt=0, le=10, description="peak learning rate of the sparsity training")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping such as {{l1: 1.0e-4, epochs: 5, lr: 0.01}}, got {raw!r}")
        unknown = sorted(set(raw) - set(SPARSITY_KEYS))
        if unknown:
            takes = ", ".join(f"{k} ({v})" for k, v in SPARSITY_KEYS.items())
            raise ValueError(f"unknown key {', '.join(map(repr, unknown))}: sparsity takes {takes}, "
                             "e.g. {l1: [1.0e-4, 1.0e-3], epochs: 5, lr: 0.01}")
        return raw

    @field_validator("l1")
    @classmethod
    def _lambdas(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("give at least one λ, e.g. l1: 1.0e-4 or l1: [1.0e-4, 1.0e-3]")
        bad = [v for v in values if v < 0]
        if bad:
            raise ValueError(f"λ is the weight of λ·Σ|γ| and cannot be negative ({', '.join(map(str, bad))}); write "
                             "e.g. l1: 1.0e-4 (0 trains as many epochs without the penalty)")
        if len(set(values)) != len(values):
            raise ValueError(f"each λ may be listed once, got {values}")
        return value

    @field_validator("epochs")
    @classmethod
    def _at_least_one(cls, value: float) -> float:
        if value < 1:
            raise ValueError("sparsity training runs at least 1 epoch; write e.g. epochs: 5")
        return value

    @property
    def lambdas(self) -> list[float]:
        """Every λ, in recipe order."""
        return [float(v) for v in (self.l1 if isinstance(self.l1, list) else [self.l1])]


class BaseNetworkConfig(BaseModel):
    """The trained network to compress: a model by name, and its weights (a checkpoint, or trained in the study)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="torchvision:NAME or timm:NAME (random init, no download) or package.module:callable"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra arguments of the model constructor")
    checkpoint: str | None = Field(None, description="state dict to start from; null: the study trains the base")
    epochs: float = Field(10.0, gt=0, le=1000, description="training of the base when there is no checkpoint")
    lr: float = Field(0.1, gt=0, le=10, description="peak learning rate of the base training")
    sparsity: SparsityConfig | None = Field(
        None, description="Network Slimming: sparsity-train the base (L1 on BatchNorm scales) before the study"
    )

    @field_validator("model")
    @classmethod
    def _not_the_standard_library(cls, value: str) -> str:
        stdlib = stdlib_module(value)
        if stdlib:
            raise ValueError(f"{value!r} is in Python's standard library ({stdlib}), which builds no network; name "
                             "torchvision:NAME, timm:NAME or a function or class that returns an nn.Module")
        return value

    @field_validator("checkpoint")
    @classmethod
    def _a_checkpoint(cls, value: str | None) -> str | None:
        if value is not None:
            why = checkpoint_problem(Path(value))
            if why:
                raise ValueError(f"{value}: {why}; give a state dict saved with torch.save(model.state_dict(), path), "
                                 "or null to train the base in the study")
        return value


def _check_range(value: tuple[float, float], step: float | None) -> None:
    low, high = value
    if not 0 < low <= high <= 1:
        raise ValueError("expected low, high with 0 < low <= high <= 1")
    n = (high - low) / step if step else 0
    if abs(n - round(n)) > 1e-6:
        raise ValueError(f"high - low ({high - low:g}) must be a multiple of its step ({step:g})")


class CompressSpaceConfig(BaseModel):
    """Recipe section `space:` for `type: compress`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["compress"] = "compress"
    base: BaseNetworkConfig
    policy: list[Literal["group", "global", "latency_greedy", "greedy_local"]] = Field(
        default_factory=lambda: ["group"], min_length=1,
        description="group: a keep ratio per group (as granularity says); global: one share of all channels, "
                    "cut at one threshold of importance across groups; latency_greedy: channels of least importance "
                    "per millisecond saved removed until a predicted speed-up (needs a latency table); greedy_local: "
                    "that greedy policy moved a few staircase steps or blocks at random, then walked back to its "
                    "target by the greedy with the moved ones held (a search around the greedy); several are searched",
    )
    staircase: bool = Field(
        True, description="with a latency table: each group offers only the widths at the lower edge of a latency "
                          "step (no width that runs no faster than a wider one)",
    )
    greedy_speedup: tuple[float, float] = Field(
        (1.2, 3.5), description="[low, high] predicted speed-up over the base that latency_greedy candidates aim at"
    )
    greedy_anchors: list[float] = Field(
        default_factory=lambda: [1.5, 2.0, 3.0],
        description="with latency_greedy among the policies: its candidates at these predicted speed-ups are "
                    "evaluated first, beside the uniform anchors",
    )
    granularity: Literal["group", "stage", "global"] = Field(
        "group", description="one keep (and rank) ratio per prunable group / per stage (resolution) / for all"
    )
    keep_step: float = Field(0.05, gt=0, le=1)
    keep: tuple[float, float] = Field((0.2, 1.0), description="[low, high] share of channels a group keeps")
    importance: list[Literal["l1", "bn_scale", "taylor"]] = Field(default_factory=lambda: ["l1"], min_length=1)
    drop: tuple[float, float] | None = Field(
        None, description="depth pruning: [low, high] share of each stage's removable residual blocks a policy drops "
                          "(replaced by the identity, the least important first: the loss rise on a calibration batch "
                          "when a block alone is removed); latency_greedy then steps through blocks as well as widths; "
                          "null: depth is not searched",
    )
    rank_step: float = Field(0.125, gt=0, le=1)
    rank: tuple[float, float] | None = Field(None, description="[low, high] rank ratios; 1 = not factorized")
    rank_forms: list[Literal["spatial", "tucker2"]] = Field(
        default_factory=lambda: ["spatial"], min_length=1,
        description="how a k×k conv is factorized: spatial SVD (k×1, 1×k) or Tucker-2 (1×1, k×k, 1×1); several "
                    "are searched per layer (as granularity says)",
    )
    precision: list[Literal["fp32", "fp16", "int8"]] = Field(default_factory=lambda: ["fp32"], min_length=1)
    round_to: int = Field(8, ge=1, le=256, description="channel counts and ranks are multiples of this")
    exclude: list[str] = Field(default_factory=list, description="groups (or layers) never pruned")

    @field_validator("policy", "importance", "rank_forms", "precision")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each choice may be listed once")
        return value

    @field_validator("greedy_speedup")
    @classmethod
    def _speedup_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 1 < value[0] <= value[1] <= 100:
            raise ValueError("expected low, high with 1 < low <= high <= 100, e.g. [1.2, 3.5]")
        return value

    @field_validator("greedy_anchors")
    @classmethod
    def _anchor_speedups(cls, value: list[float]) -> list[float]:
        if any(not 1 < v <= 100 for v in value):
            raise ValueError(f"speed-ups over the base must be above 1 (and at most 100), got {value}")
        return value

    @field_validator("drop")
    @classmethod
    def _drop_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] <= value[1] <= 1:
            raise ValueError("expected low, high with 0 <= low <= high <= 1, the share of each stage's removable "
                             "blocks dropped, e.g. [0.0, 0.6]")
        return value

    @field_validator("keep", "rank")
    @classmethod
    def _range(cls, value: tuple[float, float] | None, info: ValidationInfo) -> tuple[float, float] | None:
        if value is not None:
            _check_range(value, info.data.get(f"{info.field_name}_step"))
        return value
