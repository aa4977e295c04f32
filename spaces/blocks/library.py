"""The lightweight block library: one `nn.Module` per block, registered by name in `BLOCKS`.

Every block is built as `BLOCKS[name](in_channels, out_channels, stride=1, **options)`.
`SEARCH_OPTIONS` on each class lists the option values the `blocks` space searches by default;
a recipe may narrow or widen them.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from spaces.layers import ConvBNAct

BLOCKS: dict[str, type["Block"]] = {}


class Block(nn.Module):
    """Base class: records the constructor arguments every block shares."""

    SEARCH_OPTIONS: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride


def register_block(name: str) -> Callable[[type[Block]], type[Block]]:
    """Class decorator that adds a block to `BLOCKS` under `name`."""

    def wrap(cls: type[Block]) -> type[Block]:
        BLOCKS[name] = cls
        cls.block_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


@register_block("conv")
class ConvBlock(Block):
    """Standard k×k conv + BN + ReLU.

    Params: k²·Cin·Cout (conv) + 2·Cout (BN).
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5]}

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.body = ConvBNAct(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_block("dwsep")
class DepthwiseSeparable(Block):
    """MobileNet V1: depthwise k×k + BN + ReLU, then pointwise 1×1 + BN + ReLU.

    Params: k²·Cin + 2·Cin + Cin·Cout + 2·Cout.
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5]}

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.depthwise = ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.pointwise = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


@register_block("mbconv")
class InvertedResidual(Block):
    """MobileNet V2 inverted residual with linear bottleneck; shortcut when stride 1 and Cin == Cout.

    With hidden H = Cin·expand_ratio (no expansion conv when the ratio is 1):
    Params: [Cin·H + 2·H if ratio > 1] + k²·H + 2·H + H·Cout + 2·Cout.
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5], "expand_ratio": [1, 3, 6]}

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3, expand_ratio: int = 6
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1))
        layers.append(ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden))
        layers.append(ConvBNAct(hidden, out_channels, 1, act=False))
        self.body = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_shortcut else out
