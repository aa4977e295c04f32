"""The block contract, the `BLOCKS` registry the block modules fill (as timm's registry), and the shared
projection shortcut."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch.nn as nn

from registry import Registry
from spaces.layers import ConvBNAct

BLOCKS: Registry[type["Block"]] = Registry("block")


@dataclass(frozen=True)
class OptionRule:
    """The values a block option takes: whole numbers or any numbers (`whole`), in (`low`, `high`] — or
    [`low`, `high`] where `low_included` — odd where `odd`; or a yes/no (`boolean`)."""

    low: float = 0.0
    high: float = 0.0
    whole: bool = False
    low_included: bool = False
    odd: bool = False
    boolean: bool = False

    def problem(self, value: Any) -> str | None:
        """Why `value` is not one of these values (None where it is)."""
        if self.boolean:
            return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (self.whole and not isinstance(value, int)):
            return f"expected {'a whole number' if self.whole else 'a number'}, got {value!r}"
        above = value >= self.low if self.low_included else value > self.low
        if not above or value > self.high or (self.odd and int(value) % 2 == 0):
            bound = f"from {self.low:g}" if self.low_included else f"above {self.low:g}"
            return f"expected {'an odd ' if self.odd else 'a '}number {bound} to {self.high:g}, got {value!r}"
        return None


OPTION_RULES: dict[str, OptionRule] = {  # every option of every block, by name
    "kernel_size": OptionRule(1, 15, whole=True, low_included=True, odd=True),
    "expand_ratio": OptionRule(0, 16),
    "reduction": OptionRule(0, 64),
    "groups": OptionRule(1, 64, whole=True, low_included=True),
    "bottleneck_ratio": OptionRule(0, 4),
    "squeeze_ratio": OptionRule(0, 4),
    "bypass": OptionRule(boolean=True),
}


class Block(nn.Module):
    """Base class of every block: `Block(in_channels, out_channels, stride=1, **options)`.

    Each block class also offers `param_count(in_channels, out_channels, stride=1, **options)`, the
    closed-form parameter count stated in its docstring, and declares:
    - `SEARCH_OPTIONS`: the option values the `blocks` space searches by default;
    - `channel_multiple`: `out_channels` must be a multiple of it (the space checks `round_to` against it).
    Every stride-2 block maps an H×W input to ceil(H/2)×ceil(W/2).
    """

    SEARCH_OPTIONS: ClassVar[dict[str, list[Any]]] = {}
    channel_multiple: ClassVar[int] = 1
    block_name: ClassVar[str]

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got in={in_channels} out={out_channels}")
        if out_channels % self.channel_multiple:
            raise ValueError(
                f"block {self.block_name!r} needs out_channels that are a multiple of {self.channel_multiple}, "
                f"got {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    @classmethod
    def option_names(cls) -> list[str]:
        """The block's options: the keyword arguments of its constructor after the channels and stride."""
        params = list(inspect.signature(cls.__init__).parameters)
        return [p for p in params if p not in ("self", "in_channels", "out_channels", "stride")]


def register_block(name: str) -> Callable[[type[Block]], type[Block]]:
    """Class decorator that adds a block to `BLOCKS` under `name`."""

    def wrap(cls: type[Block]) -> type[Block]:
        BLOCKS[name] = cls
        cls.block_name = name
        return cls

    return wrap



def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Shortcut for a change of shape: a 3×3 average pool at stride 2 (so no pixel is skipped), then 1×1 conv + BN.

    Params: Cin·Cout + 2·Cout.
    """
    pool: list[nn.Module] = [nn.AvgPool2d(3, 2, 1)] if stride == 2 else []
    return nn.Sequential(*pool, ConvBNAct(in_channels, out_channels, 1, act=False))
