"""SqueezeNet's fire module: squeeze with 1×1 convs, expand with parallel 1×1 and 3×3 convs."""

from __future__ import annotations

import torch
import torch.nn as nn

from spaces.blocks.base import Block, register_block
from spaces.layers import ConvBNAct, make_divisible


def squeeze_width(out_channels: int, squeeze_ratio: float) -> int:
    """Channels of the squeeze layer: Cout·squeeze_ratio rounded to a multiple of 8 (at least 8)."""
    return make_divisible(out_channels * squeeze_ratio, 8)


@register_block("fire")
class FireModule(Block):
    """SqueezeNet fire module (with BN): squeeze 1×1 conv + BN + ReLU to S channels, then expand with a 1×1 conv
    (E1 = Cout // 2 channels) and a 3×3 conv (E3 = Cout − E1), each + BN + ReLU, concatenated.

    At stride 2 a 3×3 max pool (stride 2, padding 1) comes first, as SqueezeNet down-samples with max pools
    between fire modules; a strided 1×1 squeeze would skip three pixels in four. With `bypass`, SqueezeNet's
    simple bypass adds the input when stride is 1 and Cin == Cout (no parameters).
    S = make_divisible(Cout·squeeze_ratio, 8), so any width works.

    Options: `squeeze_ratio` (0.25), `bypass` (True).
    Params: S·(Cin + 2 + E1 + 9·E3) + 2·Cout.
    """

    SEARCH_OPTIONS = {"squeeze_ratio": [0.125, 0.25, 0.5]}

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, squeeze_ratio: float = 0.25, bypass: bool = True
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        squeeze = squeeze_width(out_channels, squeeze_ratio)
        e1 = out_channels // 2
        self.pool = nn.MaxPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.squeeze = ConvBNAct(in_channels, squeeze, 1)
        self.expand1x1 = ConvBNAct(squeeze, e1, 1)
        self.expand3x3 = ConvBNAct(squeeze, out_channels - e1, 3)
        self.use_bypass = bypass and stride == 1 and in_channels == out_channels

    @classmethod
    def param_count(
        cls, in_channels: int, out_channels: int, stride: int = 1, squeeze_ratio: float = 0.25, bypass: bool = True
    ) -> int:
        """S·(Cin + 2 + E1 + 9·E3) + 2·Cout."""
        s = squeeze_width(out_channels, squeeze_ratio)
        e1 = out_channels // 2
        e3 = out_channels - e1
        return s * (in_channels + 2 + e1 + 9 * e3) + 2 * out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(self.pool(x))
        out = torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1)
        return x + out if self.use_bypass else out
