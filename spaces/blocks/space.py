"""The `blocks` space: a stem, S stages of searched lightweight blocks, and a classifier head."""

from __future__ import annotations

from typing import Any, Iterator, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from registry import UnknownName
from spaces.blocks.base import OPTION_RULES
from spaces.blocks.library import BLOCKS
from spaces.blocks.units import at_resolution, enumerate_units, layout, network_size, unit_module
from spaces.contract import Candidate, Space, Unit, register_space
from spaces.suggest import RandomSuggest, Suggest

MAX_WIDTH = 4096  # channels of a stem, stage or head: wider is a typo, and one candidate would not fit in memory
MAX_DEPTH = 32  # blocks in one stage
MAX_PARAMS = 500_000_000  # a candidate's parameters (2 GB of fp32 weights)
MAX_ACTIVATIONS = 500_000_000  # values of the feature maps one image produces (2 GB of fp32)


def _ordered_range(value: tuple[int, int], most: int) -> tuple[int, int]:
    """A [low, high] range of positive integers up to `most`, checked before any trial samples from it."""
    if not 1 <= value[0] <= value[1] <= most:
        raise ValueError(f"expected [low, high] with 1 <= low <= high <= {most}, got {list(value)}")
    return value


class StageConfig(BaseModel):
    """One stage: its stride is fixed by the recipe; its width and depth are searched in a range."""

    model_config = ConfigDict(extra="forbid")

    stride: Literal[1, 2] = 1
    width: tuple[int, int] = Field(description="[low, high] output channels, searched in steps of round_to")
    depth: tuple[int, int] = (1, 2)

    @field_validator("width", "depth")
    @classmethod
    def _ordered(cls, value: tuple[int, int], info: ValidationInfo) -> tuple[int, int]:
        return _ordered_range(value, MAX_WIDTH if info.field_name == "width" else MAX_DEPTH)


class BlocksSpaceConfig(BaseModel):
    """Recipe section `space:` for `type: blocks`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["blocks"] = "blocks"
    blocks: list[str] = Field(default_factory=lambda: sorted(BLOCKS), min_length=1)
    stem_width: tuple[int, int] = (8, 24)
    stem_stride: Literal[1, 2] = 1
    stages: list[StageConfig] = Field(min_length=1)
    head_width: int = Field(0, ge=0, le=MAX_WIDTH, description="channels of a 1×1 conv before pooling; 0 for none")
    options: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict, description="per-block option choices overriding the block's defaults"
    )
    round_to: int = Field(8, ge=1, le=256)

    @field_validator("stem_width")
    @classmethod
    def _ordered_stem(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _ordered_range(value, MAX_WIDTH)

    @field_validator("blocks")
    @classmethod
    def _known_blocks(cls, value: list[str]) -> list[str]:
        for block in value:
            try:
                BLOCKS[block]
            except UnknownName as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _known_options(self) -> "BlocksSpaceConfig":
        for block, opts in self.options.items():
            if block not in BLOCKS:
                raise ValueError(f"options given for {UnknownName('block', block, sorted(BLOCKS))}")
            unknown = set(opts) - set(BLOCKS[block].option_names())
            if unknown:
                raise ValueError(
                    f"unknown option(s) {sorted(unknown)} for block {block!r}; "
                    f"its options: {BLOCKS[block].option_names()}"
                )
            if any(len(v) == 0 for v in opts.values()):
                raise ValueError(f"options for block {block!r} need at least one value each")
            for name, values in opts.items():
                bad = [why for why in map(OPTION_RULES[name].problem, values) if why]
                if bad:
                    raise ValueError(f"options.{block}.{name}: {bad[0]}")
        for block in self.blocks:
            multiple = BLOCKS[block].channel_multiple
            if self.round_to % multiple:
                raise ValueError(
                    f"block {block!r} needs channel counts that are multiples of {multiple}; "
                    f"round_to={self.round_to} is not"
                )
        for name, rng in [("stem_width", self.stem_width)] + [
            (f"stages[{i}].width", s.width) for i, s in enumerate(self.stages)
        ]:
            if rng[0] % self.round_to:
                raise ValueError(f"{name} low bound {rng[0]} is not a multiple of round_to={self.round_to}")
        return self


class BlockNet(nn.Module):
    """A network assembled from a `blocks` candidate: features (stem, blocks, head: the units of
    `spaces.blocks.units.layout` before the classifier), global average pooling and a linear classifier."""

    def __init__(self, candidate: Candidate) -> None:
        super().__init__()
        *body, classifier = layout(candidate)
        self.features = nn.Sequential(*(unit_module(u) for u in body))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(classifier["in_channels"], classifier["out_channels"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_space("blocks")
class BlocksSpace(Space):
    """NAS-style macro space: per stage, which block, how wide, how deep, and the block's options."""

    Config = BlocksSpaceConfig
    lists_units = True

    def __init__(self, config: BlocksSpaceConfig, *, in_channels: int, num_classes: int, image_size: int) -> None:
        self.config = config
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size

    def block_options(self, block: str) -> dict[str, list[Any]]:
        """The option choices searched for `block`: its defaults, overridden by the recipe."""
        return {**BLOCKS[block].SEARCH_OPTIONS, **self.config.options.get(block, {})}

    def sample(self, suggest: Suggest) -> Candidate:
        """Draw one candidate; parameter names are stable so samplers can learn across trials."""
        cfg = self.config
        step = cfg.round_to
        stem = {"width": suggest.int("stem.width", *cfg.stem_width, step=step), "stride": cfg.stem_stride}
        stages = []
        for i, stage in enumerate(cfg.stages):
            block = suggest.categorical(f"s{i}.block", cfg.blocks)
            options = {
                opt: suggest.categorical(f"s{i}.{block}.{opt}", choices)
                for opt, choices in self.block_options(block).items()
            }
            stages.append(
                {
                    "block": block,
                    "width": suggest.int(f"s{i}.width", *stage.width, step=step),
                    "depth": suggest.int(f"s{i}.depth", *stage.depth),
                    "stride": stage.stride,
                    "options": options,
                }
            )
        return {
            "space": "blocks",
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "stem": stem,
            "stages": stages,
            "head_width": cfg.head_width,
        }

    @staticmethod
    def describe(candidate: Candidate) -> str:
        """One line per candidate, e.g. `stem16 | mbconv×2 w24 k3 e6 | shuffle×1 w48 g4 | fire×2 w64 sq0.25`."""
        short = {
            "kernel_size": "k", "expand_ratio": "e", "groups": "g", "squeeze_ratio": "sq", "reduction": "r",
            "bottleneck_ratio": "b",
        }
        parts = [f"stem{candidate['stem']['width']}"]
        for st in candidate["stages"]:
            opts = " ".join(f"{short.get(k, k)}{v}" for k, v in st["options"].items())
            parts.append(f"{st['block']}×{st['depth']} w{st['width']} {opts}".strip())
        return " | ".join(parts)

    def units(self, candidate: Candidate) -> list[Unit]:
        """The network's units in order — stem, every block, head, classifier — with their input and output
        resolution: what a latency table is keyed by."""
        return at_resolution(layout(candidate), self.image_size)

    def all_units(self) -> Iterator[Unit]:
        """Every unit the space can produce (see `spaces.blocks.units.enumerate_units`)."""
        return enumerate_units(self)

    def reference_candidate(self) -> Candidate:
        """The network latency tables compare every other with: the candidate a draw seeded with 0 gives."""
        return self.sample(RandomSuggest(0))

    @staticmethod
    def unit_module(unit: Unit) -> nn.Module:
        """The module a unit stands for, as `BlockNet` builds it."""
        return unit_module(unit)

    def build(self, candidate: Candidate) -> nn.Module:
        """Rebuild the network a candidate describes; equal candidates give equal architectures. A candidate
        over `MAX_PARAMS` parameters or `MAX_ACTIVATIONS` feature-map values is refused before it is built, so
        it fails its trial instead of exhausting the machine's memory."""
        params, activations = network_size(self.units(candidate))
        if params > MAX_PARAMS or activations > MAX_ACTIVATIONS:
            raise ValueError(
                f"candidate too large to build: {params:,} parameters (limit {MAX_PARAMS:,}) and {activations:,} "
                f"feature-map values per image (limit {MAX_ACTIVATIONS:,}); narrow space.stages widths or depths"
            )
        return BlockNet(candidate)
