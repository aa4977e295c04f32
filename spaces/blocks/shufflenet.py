"""ShuffleNet blocks: V1's group-conv unit with a channel shuffle, and V2's channel-split unit."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from spaces.blocks.base import Block, projection, register_block
from spaces.layers import ChannelShuffle, ConvBNAct, make_divisible


def shuffle_v1_widths(
    in_channels: int, out_channels: int, stride: int, groups: int, bottleneck_ratio: float
) -> tuple[str, int, int, int]:
    """(shortcut mode, branch output channels, effective groups, bottleneck channels) of a ShuffleNet V1 unit."""
    if stride == 1 and in_channels == out_channels:
        mode = "identity"
    elif stride == 2 and out_channels > in_channels:
        mode = "concat"
    else:
        mode = "project"
    branch_out = out_channels - in_channels if mode == "concat" else out_channels
    g = math.gcd(groups, in_channels, branch_out)
    mid = make_divisible(branch_out * bottleneck_ratio, g)
    return mode, branch_out, g, mid


@register_block("shuffle")
class ShuffleUnit(Block):
    """ShuffleNet V1 unit: 1×1 group conv + BN + ReLU → channel shuffle → depthwise 3×3 (stride) + BN →
    1×1 group conv + BN, joined to the shortcut, then ReLU.

    The shortcut is, as in the paper, an identity add at stride 1 with Cin == Cout, and at stride 2 a
    3×3 average pool of x concatenated with a branch of Cout − Cin channels (when Cout > Cin). Any other
    shape change adds a projection (3×3 average pool at stride 2, then 1×1 conv + BN) so the unit always
    gives exactly Cout channels. Any width works: the groups used are G = gcd(groups, Cin, B), where the
    branch gives B = Cout − Cin (concat) or Cout channels, and the bottleneck has
    M = make_divisible(B·bottleneck_ratio, G) channels.

    Options: `groups` (2), `bottleneck_ratio` (0.25).
    Params: (Cin + B)·M/G + 13·M + 2·B [+ Cin·Cout + 2·Cout for a projection].
    """

    SEARCH_OPTIONS = {"groups": [2, 4]}

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 2, bottleneck_ratio: float = 0.25
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.mode, branch_out, g, mid = shuffle_v1_widths(in_channels, out_channels, stride, groups, bottleneck_ratio)
        self.branch = nn.Sequential(
            ConvBNAct(in_channels, mid, 1, groups=g),
            ChannelShuffle(g) if g > 1 else nn.Identity(),
            ConvBNAct(mid, mid, 3, stride, groups=mid, act=False),
            ConvBNAct(mid, branch_out, 1, groups=g, act=False),
        )
        self.shortcut: nn.Module = nn.Identity()
        if self.mode == "concat":
            self.shortcut = nn.AvgPool2d(3, 2, 1)
        elif self.mode == "project":
            self.shortcut = projection(in_channels, out_channels, stride)

    @classmethod
    def param_count(
        cls, in_channels: int, out_channels: int, stride: int = 1, groups: int = 2, bottleneck_ratio: float = 0.25
    ) -> int:
        """(Cin + B)·M/G + 13·M + 2·B, plus Cin·Cout + 2·Cout for a projection shortcut."""
        mode, b, g, m = shuffle_v1_widths(in_channels, out_channels, stride, groups, bottleneck_ratio)
        projection = in_channels * out_channels + 2 * out_channels if mode == "project" else 0
        return (in_channels + b) * m // g + 13 * m + 2 * b + projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        if self.mode == "concat":
            return torch.relu(torch.cat([self.shortcut(x), y], dim=1))
        return torch.relu(self.shortcut(x) + y)


@register_block("shufflev2")
class ShuffleV2Unit(Block):
    """ShuffleNet V2 unit: two branches of Cout/2 channels each, concatenated, then a 2-group channel shuffle.

    At stride 1 with Cin == Cout the input is split in half: one half passes through, the other goes through
    1×1 conv + BN + ReLU → depthwise k×k + BN → 1×1 conv + BN + ReLU. Otherwise (stride 2, as in the paper,
    or a change of width at stride 1) both branches see the whole input: the second as above, the first is
    depthwise k×k (stride) + BN → 1×1 conv + BN + ReLU. Needs an even Cout; with b = Cout/2:

    Options: `kernel_size` (3).
    Params, split: 2·b² + k²·b + 6·b. Params, two branches: k²·Cin + 2·Cin + 2·Cin·b + b² + k²·b + 8·b.
    """

    SEARCH_OPTIONS = {"kernel_size": [3, 5]}
    channel_multiple = 2

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, stride)
        half = out_channels // 2
        self.split = stride == 1 and in_channels == out_channels
        branch_in = half if self.split else in_channels
        self.branch1 = nn.Identity() if self.split else nn.Sequential(
            ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels, act=False),
            ConvBNAct(in_channels, half, 1),
        )
        self.branch2 = nn.Sequential(
            ConvBNAct(branch_in, half, 1),
            ConvBNAct(half, half, kernel_size, stride, groups=half, act=False),
            ConvBNAct(half, half, 1),
        )
        self.shuffle = ChannelShuffle(2)

    @classmethod
    def param_count(cls, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> int:
        """2·b² + k²·b + 6·b when splitting, else k²·Cin + 2·Cin + 2·Cin·b + b² + k²·b + 8·b; b = Cout/2."""
        b, k2, cin = out_channels // 2, kernel_size**2, in_channels
        if stride == 1 and in_channels == out_channels:
            return 2 * b * b + k2 * b + 6 * b
        return k2 * cin + 2 * cin + 2 * cin * b + b * b + k2 * b + 8 * b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            half = self.out_channels // 2
            x1, x2 = x.split([half, half], dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return self.shuffle(out)
