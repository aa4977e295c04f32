"""Depth pruning: residual blocks whose branch is added to an identity shortcut, found in any traceable model and
removed whole (replaced by the identity, which is what the block computes when its branch gives zero).

A block is a submodule, called once in the forward pass with one tensor that has the shape of its output, whose own
traced graph ends (after at most a few elementwise activations) in an addition of its input to a branch computed
from it — torchvision's BasicBlock / Bottleneck without downsample, MobileNetV2's and EfficientNet's inverted
residuals with a skip, ConvNeXt blocks. A block with a projection shortcut changes shape or adds something else
than its input, so it is never removable; a module that cannot be traced is left whole.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from spaces.compress.errors import CompressError
from spaces.compress.hooks import run_hooked
from spaces.compress.prune import PrunableGroup
from spaces.suggest import Suggest

_ADDS = {operator.add, operator.iadd, torch.add}
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.Identity, nn.Dropout)
_ACTIVATION_FUNCTIONS = {F.relu, F.relu6, F.gelu, F.silu, F.hardswish, torch.relu}


@dataclass(frozen=True)
class Block:
    """A block the greedy may remove: the importance it loses (on the scale of the channel costs) and the prunable
    groups that live inside it."""

    loss: float
    groups: tuple[str, ...]


@dataclass(frozen=True)
class ResidualBlock:
    """A removable block: its module path, its stage (the resolution it runs at) and the conv / linear layers in it."""

    name: str
    stage: str
    layers: tuple[str, ...]


def _strip_activations(node: fx.Node, gm: fx.GraphModule) -> fx.Node:
    """The node an output is computed from once trailing elementwise activations are looked through."""
    while True:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _ACTIVATIONS):
            node = node.args[0]
        elif node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
            node = node.args[0]
        elif node.op == "call_method" and node.target in ("relu", "relu_"):
            node = node.args[0]
        else:
            return node


def adds_its_input(module: nn.Module) -> bool:
    """Whether `module`'s traced forward returns its (first) input added to something else computed from it."""
    try:
        gm = fx.symbolic_trace(module)
    except Exception:  # untraceable control flow: left whole, never removed
        return False
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if not inputs or len(outputs) != 1 or not isinstance(outputs[0].args[0], fx.Node):
        return False
    x, last = inputs[0], _strip_activations(outputs[0].args[0], gm)
    is_add = (last.op == "call_function" and last.target in _ADDS) or (
        last.op == "call_method" and last.target in ("add", "add_"))
    operands = [_through_identity(a, gm) for a in last.args[:2] if isinstance(a, fx.Node)] if is_add else []
    return len(operands) == 2 and operands.count(x) == 1


def _through_identity(node: fx.Node, gm: fx.GraphModule) -> fx.Node:
    """The node an `nn.Identity` call (a shortcut module that does nothing) passes on."""
    while node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Identity):
        node = node.args[0]
    return node


def residual_blocks(model: nn.Module, example_input: torch.Tensor) -> list[ResidualBlock]:
    """Every removable residual block of `model`, in the order the forward pass calls them (innermost where blocks
    nest). Each is named by its module path; its stage is the resolution of its input."""
    net = copy.deepcopy(model).eval()
    names = {m: n for n, m in net.named_modules()}
    calls: dict[str, list[tuple[torch.Size, torch.Size]]] = {}
    order: list[str] = []

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        name = names[module]
        if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            calls.setdefault(name, []).append((inputs[0].shape, output.shape))
            order.append(name)
        else:
            calls.setdefault(name, []).append((torch.Size([-1]), torch.Size([-2])))

    run_hooked(net, [m for name, m in net.named_modules() if name and list(m.children())], hook, example_input)
    found = [name for name in dict.fromkeys(order)
             if len(calls[name]) == 1 and calls[name][0][0] == calls[name][0][1] and len(calls[name][0][0]) == 4
             and adds_its_input(net.get_submodule(name))]
    innermost = [n for n in found if not any(other.startswith(n + ".") for other in found)]
    layers = {n: m for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return [ResidualBlock(n, "x".join(map(str, calls[n][0][0][-2:])), tuple(layer for layer in layers if layer.startswith(n + ".")))
            for n in innermost]


def drop_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """`model` (modified in place) with each named block replaced by the identity."""
    for name in names:
        parent, _, child = name.rpartition(".")
        try:
            holder = model.get_submodule(parent) if parent else model
            getattr(holder, child)
        except AttributeError:
            raise CompressError(f"drop: no block {name!r} in the network") from None
        setattr(holder, child, nn.Identity())
    return model


@torch.no_grad()
def removal_losses(
    model: nn.Module, blocks: Sequence[ResidualBlock], calibration: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, float]:
    """Block → how much the cross-entropy on the labelled `calibration` batch rises when that block alone is removed
    (eval mode): what removing it costs before any fine-tune, on the scale of the loss."""
    inputs, labels = calibration
    net = copy.deepcopy(model).eval()
    base = F.cross_entropy(net(inputs), labels).item()
    out = {}
    for block in blocks:
        parent, _, child = block.name.rpartition(".")
        holder = net.get_submodule(parent) if parent else net
        kept = getattr(holder, child)
        setattr(holder, child, nn.Identity())
        out[block.name] = max(0.0, F.cross_entropy(net(inputs), labels).item() - base)
        setattr(holder, child, kept)
    return out


class DepthPolicy:
    """The depth side of a compress space: its removable blocks, what each costs, and how a policy picks the ones
    it drops — per stage (or for the whole network, granularity global) a count drawn inside `space.drop`'s share,
    the blocks of least removal loss going first."""

    def __init__(self, base: nn.Module, example_input: torch.Tensor, share: tuple[float, float],
                 granularity: str, calibration: tuple[torch.Tensor, torch.Tensor] | None,
                 exclude: Sequence[str] = ()) -> None:
        self.base, self.share, self.calibration = base, share, calibration
        self.blocks = [b for b in residual_blocks(base, example_input)
                       if not any(e == b.name or e.startswith(b.name + ".") for e in exclude)]
        self.keys = {b.name: "all" if granularity == "global" else b.stage for b in self.blocks}
        self._losses: dict[str, float] | None = None

    def losses(self) -> dict[str, float]:
        """Block → its removal loss on the calibration batch (measured once)."""
        if self._losses is None:
            if self.calibration is None:
                raise CompressError("space.drop: depth pruning ranks blocks on a calibration batch of training images; "
                                    "the space was given none")
            self._losses = removal_losses(self.base, self.blocks, self.calibration)
        return self._losses

    def counts(self) -> dict[str, tuple[int, int]]:
        """Key (a stage, or `all`) → the fewest and most of its blocks a policy drops."""
        sizes: dict[str, int] = {}
        for key in self.keys.values():
            sizes[key] = sizes.get(key, 0) + 1
        low, high = self.share
        return {k: (math.ceil(low * n - 1e-9), math.floor(high * n + 1e-9)) for k, n in sizes.items()}

    def least_important(self, key: str, count: int) -> list[str]:
        """The `count` blocks of `key` whose removal costs the least loss."""
        losses = self.losses()
        members = [b for b, k in self.keys.items() if k == key]
        return sorted(members, key=lambda b: (losses[b], b))[:count]

    def sample(self, suggest: Suggest) -> list[str]:
        """Blocks dropped: a count per key (`drop.<key>`), the least important blocks of the key."""
        dropped = [b for key, (low, high) in self.counts().items()
                   for b in self.least_important(key, suggest.int(f"drop.{key}", low, high))]
        return self.in_order(dropped)

    def anchor_params(self) -> dict[str, int]:
        """The fewest blocks dropped per key: uniform anchors stay as deep as the recipe allows."""
        return {f"drop.{key}": low for key, (low, _) in self.counts().items()}

    def greedy_blocks(self, groups: Sequence[PrunableGroup], loss_per_cost: float) -> dict[str, Block]:
        """Block → what the latency greedy weighs its removal by: its loss in units of channel cost (divided by
        `loss_per_cost`, see `spaces.compress.greedy.loss_per_cost`) and the groups living inside it."""
        losses = self.losses()
        return {b.name: Block(losses[b.name] / loss_per_cost,
                              tuple(g.name for g in groups if set(g.layers) <= set(b.layers)))
                for b in self.blocks}

    def in_order(self, names: Sequence[str]) -> list[str]:
        """`names` in forward order."""
        wanted = set(names)
        return [b.name for b in self.blocks if b.name in wanted]

    def layers(self, dropped: Sequence[str]) -> set[str]:
        """The conv / linear layers inside the dropped blocks."""
        wanted = set(dropped)
        return {layer for b in self.blocks if b.name in wanted for layer in b.layers}
