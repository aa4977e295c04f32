"""MobileNet blocks: V1's depthwise-separable conv and V2's inverted residual with a linear bottleneck."""

from __future__ import annotations

import torch
import torch.nn as nn

from spaces.blocks.base import Block, register_block
from spaces.layers import ConvBNAct


@register_block("dwsep")
class DepthwiseSeparable(Block):
    """MobileNet V1: depthwise k×k + BN + ReLU, then pointwise 1×1 + BN + ReLU.

    Options: `kernel_size` (3). Params: k²·Cin + 2·Cin + Cin·Cout + 2·Cout.
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5]}

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.depthwise = ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.pointwise = ConvBNAct(in_channels, out_channels, 1)

    @classmethod
    def param_count(cls, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> int:
        """k²·Cin + 2·Cin + Cin·Cout + 2·Cout."""
        return kernel_size**2 * in_channels + 2 * in_channels + in_channels * out_channels + 2 * out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


@register_block("mbconv")
class InvertedResidual(Block):
    """MobileNet V2 inverted residual: 1×1 expand + BN + ReLU, depthwise k×k + BN + ReLU, 1×1 project + BN;
    identity shortcut when stride is 1 and Cin == Cout.

    Options: `kernel_size` (3), `expand_ratio` (6; no expansion conv when 1). With the hidden width
    H = max(1, round(Cin·expand_ratio)):
    Params: [Cin·H + 2·H if expand_ratio ≠ 1] + k²·H + 2·H + H·Cout + 2·Cout.
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5], "expand_ratio": [1, 3, 6]}

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3, expand_ratio: float = 6
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        hidden = max(1, int(round(in_channels * expand_ratio)))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1))
        layers.append(ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden))
        layers.append(ConvBNAct(hidden, out_channels, 1, act=False))
        self.body = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and in_channels == out_channels

    @classmethod
    def param_count(
        cls, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3, expand_ratio: float = 6
    ) -> int:
        """[Cin·H + 2·H if expanding] + k²·H + 2·H + H·Cout + 2·Cout, with H = max(1, round(Cin·expand_ratio))."""
        hidden = max(1, int(round(in_channels * expand_ratio)))
        expand = in_channels * hidden + 2 * hidden if expand_ratio != 1 else 0
        return expand + kernel_size**2 * hidden + 2 * hidden + hidden * out_channels + 2 * out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_shortcut else out
