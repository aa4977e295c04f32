"""Small residual networks to compress: a tiny ResNet for 16×16 images and ResNet-18 for 32×32 ones."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, ResNet


class TinyResNet(nn.Module):
    """A 3×3 stem and one stage of BasicBlocks per width, stride 2 from the second stage; residual adds
    and a projection shortcut at each stride, as in ResNet. Sized for 8–32 pixel images."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64), depth: int = 1
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def tiny_resnet(
    num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64), depth: int = 1
) -> TinyResNet:
    """A tiny ResNet (widths per stage, `depth` BasicBlocks each) for the digits studies."""
    return TinyResNet(num_classes, in_channels, tuple(widths), depth)


def resnet18_small(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """torchvision's ResNet-18 adapted to 32×32 images (CIFAR): a 3×3 stride-1 stem and no max-pool."""
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
