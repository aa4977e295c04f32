"""Plain convolution blocks: k×k conv + BN + ReLU, and its C.ReLU variant that computes half the channels."""

from __future__ import annotations

import torch
import torch.nn as nn

from spaces.blocks.base import Block, register_block
from spaces.layers import ConvBNAct


@register_block("conv")
class ConvBlock(Block):
    """Standard k×k conv + BN + ReLU.

    Options: `kernel_size` (3). Params: k²·Cin·Cout + 2·Cout.
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5]}

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.body = ConvBNAct(in_channels, out_channels, kernel_size, stride)

    @classmethod
    def param_count(cls, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> int:
        """k²·Cin·Cout + 2·Cout."""
        return kernel_size**2 * in_channels * out_channels + 2 * out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_block("crelu")
class CReLUBlock(Block):
    """C.ReLU (Shang et al. 2016, as in PVANet): a k×k conv + BN to Cout/2 channels, the output concatenated
    with its negation, a learned per-channel scale and bias over all Cout channels, then ReLU.

    Early conv filters come in opposite-phase pairs; computing one of each pair halves the conv's cost.
    Needs an even Cout. Options: `kernel_size` (3). Params: k²·Cin·Cout/2 + Cout (BN) + 2·Cout (scale, bias).
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5]}
    channel_multiple = 2

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.conv = ConvBNAct(in_channels, out_channels // 2, kernel_size, stride, act=False)
        self.scale = nn.Parameter(torch.ones(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @classmethod
    def param_count(cls, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> int:
        """k²·Cin·Cout/2 + Cout + 2·Cout."""
        half = out_channels // 2
        return kernel_size**2 * in_channels * half + 2 * half + 2 * out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = torch.cat([y, -y], dim=1)
        return torch.relu(y * self.scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1))
