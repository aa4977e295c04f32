"""Residual blocks: ResNet's bottleneck and ERFNet's factorized (k×1, 1×k) non-bottleneck-1D block."""

from __future__ import annotations

import torch
import torch.nn as nn

from spaces.blocks.base import Block, projection, register_block
from spaces.layers import ConvBNAct, make_divisible


def bottleneck_width(out_channels: int, reduction: float) -> int:
    """Channels inside a bottleneck: Cout / reduction rounded to a multiple of 8 (at least 8)."""
    return make_divisible(out_channels / reduction, 8)


def _shortcut_params(in_channels: int, out_channels: int, stride: int) -> int:
    return 0 if stride == 1 and in_channels == out_channels else in_channels * out_channels + 2 * out_channels


@register_block("bottleneck")
class Bottleneck(Block):
    """ResNet bottleneck (also ENet's): 1×1 reduce + BN + ReLU → k×k (stride) + BN + ReLU → 1×1 expand + BN,
    added to the shortcut, then ReLU. The shortcut is the identity when stride is 1 and Cin == Cout, else a
    projection (3×3 average pool at stride 2, then 1×1 conv + BN). With M = make_divisible(Cout / reduction, 8):

    Options: `kernel_size` (3), `reduction` (4).
    Params: Cin·M + 4·M + k²·M² + M·Cout + 2·Cout [+ Cin·Cout + 2·Cout for a projection].
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5], "reduction": [2, 4]}

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3, reduction: float = 4
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        mid = bottleneck_width(out_channels, reduction)
        self.body = nn.Sequential(
            ConvBNAct(in_channels, mid, 1),
            ConvBNAct(mid, mid, kernel_size, stride),
            ConvBNAct(mid, out_channels, 1, act=False),
        )
        same = stride == 1 and in_channels == out_channels
        self.shortcut = nn.Identity() if same else projection(in_channels, out_channels, stride)

    @classmethod
    def param_count(
        cls, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3, reduction: float = 4
    ) -> int:
        """Cin·M + 4·M + k²·M² + M·Cout + 2·Cout, plus Cin·Cout + 2·Cout for a projection shortcut."""
        m = bottleneck_width(out_channels, reduction)
        body = in_channels * m + 4 * m + kernel_size**2 * m * m + m * out_channels + 2 * out_channels
        return body + _shortcut_params(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


@register_block("factorized")
class FactorizedResidual(Block):
    """ERFNet non-bottleneck-1D: each k×k conv replaced by a k×1 then a 1×k conv, twice, with a residual.

    k×1 conv (bias) + ReLU → 1×k conv + BN + ReLU → k×1 conv (bias) + ReLU → 1×k conv + BN, added to the
    shortcut, then ReLU. The first pair carries the stride (k×1 strides rows, 1×k columns) and the change of
    width; the shortcut is the identity when shapes match, else a projection (3×3 average pool at stride 2,
    then 1×1 conv + BN).

    Options: `kernel_size` (3).
    Params: k·Cin·Cout + 3·k·Cout² + 6·Cout [+ Cin·Cout + 2·Cout for a projection].
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5]}

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, stride)
        k, p, c = kernel_size, kernel_size // 2, out_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c, (k, 1), (stride, 1), (p, 0)),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, (1, k), (1, stride), (0, p), bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, (k, 1), 1, (p, 0)),
            nn.ReLU(inplace=True),
            ConvBNAct(c, c, (1, k), 1, act=False),
        )
        same = stride == 1 and in_channels == out_channels
        self.shortcut = nn.Identity() if same else projection(in_channels, out_channels, stride)

    @classmethod
    def param_count(cls, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> int:
        """k·Cin·Cout + 3·k·Cout² + 6·Cout, plus Cin·Cout + 2·Cout for a projection shortcut."""
        k, c = kernel_size, out_channels
        return k * in_channels * c + 3 * k * c * c + 6 * c + _shortcut_params(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))
