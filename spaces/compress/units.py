"""The geometry of a pruned network as a list of units — one per conv or linear layer, with the widths a pruning
policy gives it — so a latency table keyed like the blocks space's (`block`, channels, stride, resolution,
options) predicts a policy's latency without building the network.

A layer's output width is set by the prunable group its output channels belong to, its input width by the group
of its input channels (see `ChannelGraph.layer_groups`); a depthwise conv's groups follow its width. A unit stands
for the layer with its BatchNorm and activation (conv → BN → ReLU, as ONNX Runtime and TensorRT fuse them);
additions, pools and reshapes are left to the table's fitted per-network correction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from spaces.compress.compress import channel_graph
from spaces.compress.hooks import run_hooked
from spaces.compress.prune import ROOT_TYPES, PrunableGroup, kept_channels
from spaces.contract import Unit


@dataclass(frozen=True)
class LayerGeometry:
    """One conv or linear layer of the base as the forward pass calls it, and the groups that set its widths."""

    name: str
    block: str  # conv or linear
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    groups: int
    resolution: int
    out_resolution: int
    in_group: str | None
    out_group: str | None

    @property
    def depthwise(self) -> bool:
        return self.block == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels


def layer_geometry(model: nn.Module, example_input: torch.Tensor, exclude: Sequence[str] = ()) -> list[LayerGeometry]:
    """Every conv / linear layer of `model` in the order the forward pass calls them, with its input and output
    resolution and the prunable groups (of `prunable_groups(model, example_input, exclude)`) of its channels."""
    net, graph = channel_graph(copy.deepcopy(model).eval(), example_input, exclude)
    sides = graph.layer_groups()
    names = {m: n for n, m in net.named_modules()}
    seen: list[LayerGeometry] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        name = names[module]
        if any(g.name == name for g in seen):
            return
        side = sides.get(name, {})
        res_in = inputs[0].shape[2] if inputs[0].dim() > 2 else 1
        res_out = output.shape[2] if output.dim() > 2 else 1
        if isinstance(module, nn.Linear):
            seen.append(LayerGeometry(name, "linear", module.in_features, module.out_features, 1, 1, 0, 1, 1, 1,
                                      side.get("in"), side.get("out")))
            return
        k, s, p = (v[0] if isinstance(v, tuple) else v for v in (module.kernel_size, module.stride, module.padding))
        seen.append(LayerGeometry(name, "conv", module.in_channels, module.out_channels, int(k), int(s),
                                  int(p) if isinstance(p, int) else 0, module.groups, int(res_in), int(res_out),
                                  side.get("in"), side.get("out")))

    run_hooked(net, [m for m in net.modules() if isinstance(m, ROOT_TYPES)], hook, example_input)
    return seen


def group_widths(groups: Iterable[PrunableGroup], keep: Mapping[str, float], round_to: int) -> dict[str, int]:
    """Group name → channels it keeps under per-group keep ratios (missing groups keep all), rounded as
    `compress` rounds them."""
    return {g.name: kept_channels(g.channels, g.channel_groups, float(keep.get(g.name, 1.0)), round_to)
            for g in groups}


def layer_unit(layer: LayerGeometry, cin: int, cout: int) -> Unit:
    """The unit of `layer` at input width `cin` and output width `cout`."""
    groups = cin if layer.depthwise else layer.groups
    options = {"kernel_size": layer.kernel_size, "padding": layer.padding, "groups": groups} \
        if layer.block == "conv" else {}
    return {"block": layer.block, "in_channels": cin, "out_channels": cout, "stride": layer.stride,
            "resolution": layer.resolution, "out_resolution": layer.out_resolution, "options": options}


def policy_units(layers: Sequence[LayerGeometry], widths: Mapping[str, int]) -> list[Unit]:
    """The units of the base pruned to `widths` (group name → channels kept)."""
    units = []
    for layer in layers:
        cin = widths.get(layer.in_group, layer.in_channels) if layer.in_group else layer.in_channels
        cout = widths.get(layer.out_group, layer.out_channels) if layer.out_group else layer.out_channels
        if layer.depthwise:
            cin = cout = min(cin, cout)
        units.append(layer_unit(layer, cin, cout))
    return units


def all_layer_units(layers: Sequence[LayerGeometry], choices: Mapping[str, Sequence[int]]) -> Iterable[Unit]:
    """Every unit the layers can take when each group may keep any of `choices[group]` channels."""
    for layer in layers:
        ins = choices.get(layer.in_group, [layer.in_channels]) if layer.in_group else [layer.in_channels]
        outs = choices.get(layer.out_group, [layer.out_channels]) if layer.out_group else [layer.out_channels]
        if layer.depthwise:
            yield from (layer_unit(layer, w, w) for w in outs)
            continue
        for cin in ins:
            for cout in outs:
                yield layer_unit(layer, cin, cout)


def unit_module(unit: Unit) -> nn.Module:
    """The module a unit stands for: conv → BatchNorm → ReLU, or flatten → linear."""
    cin, cout = unit["in_channels"], unit["out_channels"]
    if unit["block"] == "linear":
        return nn.Sequential(nn.Flatten(1), nn.Linear(cin, cout))
    o = unit["options"]
    return nn.Sequential(
        nn.Conv2d(cin, cout, o["kernel_size"], unit["stride"], o["padding"], groups=o["groups"], bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )
