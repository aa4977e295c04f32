"""Small layers and helpers shared by the blocks and spaces."""

from __future__ import annotations

import torch
import torch.nn as nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10% (as torchvision does)."""
    if divisor <= 1:
        return max(int(round(value)), min_value or 1)
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional ReLU: the unit every block is built from."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        padding = (ks[0] // 2, ks[1] // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, ks, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class ChannelShuffle(nn.Module):
    """Interleave `groups` equal channel groups: (N, g·c, H, W) → view (N, g, c, H, W) → swap → (N, c·g, H, W), so
    the next group conv sees every group. `as_gather` runs it as one `index_select` (a single autograd node, which
    the pruning dependency graph can follow; see `spaces.compress.shuffle`)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.as_gather = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.as_gather:
            order = torch.arange(c, device=x.device).view(self.groups, c // self.groups).t().reshape(-1)
            return x.index_select(1, order)
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
