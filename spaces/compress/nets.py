"""Small residual networks to compress: a tiny ResNet for 16×16 images, ResNet-56 and ResNet-18 for 32×32 ones."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, ResNet


class TinyResNet(nn.Module):
    """A 3×3 stem and one stage of BasicBlocks per width, stride 2 from the second stage; residual adds
    and a projection shortcut at each stride, as in ResNet. Sized for 8–32 pixel images. `zero_init_residual`
    starts every block's last BatchNorm at zero, so each block begins as the identity (as torchvision's ResNet)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64), depth: int = 1,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        ch = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or ch != width:
                    down = nn.Sequential(nn.Conv2d(ch, width, 1, s, bias=False), nn.BatchNorm2d(width))
                blocks.append(BasicBlock(ch, width, s, down))
                ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def tiny_resnet(
    num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64), depth: int = 1
) -> TinyResNet:
    """A tiny ResNet (widths per stage, `depth` BasicBlocks each) for the digits studies."""
    return TinyResNet(num_classes, in_channels, tuple(widths), depth)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> TinyResNet:
    """CIFAR ResNet-56 (He et al. 2016, section 4.2): a 3×3 stem, 3 stages of 9 BasicBlocks at 16/32/64 channels
    on 32×32, 16×16 and 8×8 maps, global pooling and a linear classifier; 0.86M parameters. The two shortcuts
    that change width are 1×1 projections with BatchNorm (option B, as in Torch-Pruning's ResNet-56) rather
    than the paper's zero-padding (option A): a projection gives each stage's residual stream a prunable
    group of its own, where zero-padded channels would tie one stage's stream to part of the next."""
    return TinyResNet(num_classes, in_channels, (16, 32, 64), depth=9, zero_init_residual=True)


def resnet18_small(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """torchvision's ResNet-18 adapted to 32×32 images (CIFAR): a 3×3 stride-1 stem and no max-pool."""
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
