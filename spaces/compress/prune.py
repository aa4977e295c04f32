"""Structured channel pruning on Torch-Pruning's dependency graph: groups named, ranked and physically cut.

A *group* is every weight slice tied to one set of channels: a conv's outputs with its BatchNorm, the
inputs of every consumer, the other branches of a residual add, the slices of a concat, the
channels of a depthwise conv. Each group is named after its first conv or linear layer (in module
order) and pruned to `keep` of its channels, rounded to a multiple of `round_to`; root channels that
reach the same weights (see `graph`) are one unit, cut or kept together, and every conv / linear layer
of a group keeps at least `round_to` of its own channels. Groups that reach the network's output (the
classifier), or cross a channel shuffle, a channel split or slice (sizes written in the code), are kept
whole. Layers the eval forward never calls are removed first (`drop_unused`).

`global_keep` turns one share for the whole network into per-group ratios (Network Slimming's global
threshold): every channel of every prunable group is ranked by one comparable score, the top `keep` share
of the channels survives, and each group's survivors are rounded like a per-group ratio.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner import function

from spaces.compress.errors import CompressError
from spaces.compress.graph import all_groups, build_graph, collect_group
from spaces.compress.hooks import run_hooked
from spaces.compress.importance import Scorer
from spaces.compress.shuffle import shuffles_as_gather
from spaces.layers import ChannelShuffle

ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
_KNOWN_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                 nn.Embedding, nn.PReLU)


class _ShufflePruner(function.BasePruningFunc):
    """Torch-Pruning handler for ChannelShuffle: it couples the channels on both sides; never pruned itself."""

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        raise CompressError("a group crossing a channel shuffle cannot be pruned")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    def get_in_channels(self, layer: nn.Module) -> None:
        return None


@dataclass(frozen=True)
class PrunableGroup:
    """One prunable group: its name, channels (in `channel_groups` equal groups), stage and layers."""

    name: str
    channels: int
    channel_groups: int
    stage: str
    layers: tuple[str, ...]


def kept_channels(channels: int, channel_groups: int, keep: float, round_to: int) -> int:
    """Channels left of `channels` at ratio `keep`: a multiple of `round_to` (never below it), equal in
    every channel group; all of them when `keep` >= 1 or the group is too small to round."""
    per_group = channels // channel_groups
    step = max(1, round_to // math.gcd(round_to, channel_groups))
    if keep >= 1 or per_group <= step:
        return channels
    k = int(math.floor(keep * per_group / step + 0.5)) * step
    return min(max(k, step), per_group) * channel_groups


@dataclass(frozen=True)
class _Group:
    """A prunable group with its Torch-Pruning group, its units (root channels pruned together) and, for
    each of its conv / linear layers, the units reaching it."""

    info: PrunableGroup
    root: nn.Module
    handler: object
    group: tp.Group
    units: list[list[int]]
    layer_units: tuple[frozenset[int], ...]


@dataclass
class Probe:
    """What one eval-mode forward pass shows: layers called, conv / linear output resolutions, output layers."""

    called: set[nn.Module]
    stages: dict[nn.Module, str]
    output_layers: set[nn.Module]


def _tensors(out: object) -> list[torch.Tensor]:
    """The tensors of a forward's output (a tensor, a tuple or list of them, or a dict)."""
    if isinstance(out, dict):
        out = list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def probe(model: nn.Module, example_input: torch.Tensor) -> Probe:
    """Run `model` once on `example_input` with hooks on every layer holding parameters (and every conv / linear)."""
    called: set[nn.Module] = set()
    stages: dict[nn.Module, str] = {}
    produced: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        called.add(module)
        if isinstance(module, ROOT_TYPES) and isinstance(output, torch.Tensor):
            stages[module] = "x".join(str(s) for s in output.shape[2:]) if output.dim() > 2 else "flat"
            produced.append((module, output))

    out = run_hooked(model.eval(), [m for m in model.modules()
                                    if isinstance(m, ROOT_TYPES) or any(True for _ in m.parameters(recurse=False))],
                     hook, example_input)
    outs = _tensors(out)
    return Probe(called, stages, {m for m, o in produced if any(o is t for t in outs)})


def _is_attention(module: nn.Module) -> bool:
    """Self-attention (torch's MultiheadAttention, or an `...Attention` / attention pool module with query,
    key and value projections, as timm's): its channels are heads and tokens, not conv channels."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    children = {n for n, _ in module.named_children()}
    return bool(re.search(r"Attention|Attn", type(module).__name__)) and bool(children & {"qkv", "q", "kv"})


def check_supported(model: nn.Module) -> None:
    """Refuse, naming the layer, what channel pruning cannot keep consistent: attention, and token-mixing
    parameters (positional embeddings, position-bias tables)."""
    for name, module in model.named_modules():
        if _is_attention(module):
            raise CompressError(
                f"cannot prune layer '{name}' ({type(module).__name__}): attention layers are not supported; "
                "channel pruning here is for convolutional networks (low-rank factorization still applies)"
            )
    for name, module in model.named_modules():
        if isinstance(module, _KNOWN_LAYERS):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if sum(1 for s in p.shape if s > 1) > 1:
                raise CompressError(
                    f"cannot prune layer '{name or type(module).__name__}' ({type(module).__name__}): its parameter "
                    f"'{pname}' of shape {tuple(p.shape)} mixes tokens or positions (an embedding or a position "
                    "bias table); channel pruning here is for convolutional networks"
                )


def drop_unused(model: nn.Module, example_input: torch.Tensor, seen: Probe) -> list[str]:
    """Remove (set to None in their parent) the layers the eval forward never calls, such as auxiliary
    training heads, and return their names. They are not part of the network that is pruned and exported,
    and they could not be kept: their inputs would be pruned without them. Removal is checked: if the
    output changes or the forward fails (weights used functionally), it is refused naming the layer."""
    def unused(m: nn.Module) -> bool:
        held = [x for x in m.modules() if any(True for _ in x.parameters(recurse=False))]
        return bool(held) and not any(x in seen.called for x in held)

    dropped = []
    for name, module in model.named_modules():
        if name and unused(module) and not any(name.startswith(d + ".") for d in dropped):
            dropped.append(name)
    if not dropped:
        return []
    with torch.no_grad():
        before = model(example_input)
        removed = {}
        for name in dropped:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            removed[name] = getattr(parent, child)
            setattr(parent, child, None)
        try:
            after = model(example_input)
            same = all(torch.equal(a, b) for a, b in zip(_tensors(after), _tensors(before), strict=True))
        except Exception:  # any failure: the removed weights were used after all
            same = False
    if not same:
        name = dropped[0]
        raise CompressError(
            f"cannot prune layer '{name}' ({type(removed[name]).__name__}): the forward pass (eval mode) never "
            "calls it, yet the network needs it (its weights are used functionally?); remove it or build the "
            "model without it"
        )
    return dropped


class ChannelGraph:
    """The dependency graph of one model and its prunable groups; `plan` ranks channels, `apply` cuts them."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, exclude: tuple[str, ...] = ()) -> None:
        check_supported(model)
        seen = probe(model, example_input)
        self.dropped = drop_unused(model, example_input, seen)
        self.model = model
        with shuffles_as_gather(model):
            self.graph = build_graph(model, example_input, {ChannelShuffle: _ShufflePruner()})
        self._unmap_splits()
        self.output_layers = seen.output_layers
        self.kept_whole: dict[str, str] = {}
        self._groups: list[_Group] = []
        order = {m: i for i, m in enumerate(model.modules())}
        names = {m: n for n, m in model.named_modules()}
        in_groups, out_groups = self._channel_groups()
        for group, classes in all_groups(self.graph, ROOT_TYPES):
            layers = sorted(
                {d.target.module for d, _ in group
                 if isinstance(d.target.module, ROOT_TYPES) and self.graph.is_out_channel_pruning_fn(d.handler)},
                key=order.__getitem__,
            )
            if not layers:
                continue
            layer_names = tuple(names[m] for m in layers)
            name = layer_names[0]
            channel_groups = max(
                [(out_groups if self.graph.is_out_channel_pruning_fn(d.handler) else in_groups).get(d.target.module, 1)
                 for d, _ in group]
            )
            positions = _positions(len(group[0].idxs), channel_groups)
            units = positions if channel_groups == 1 and len(classes) == len(positions) else classes
            if channel_groups > 1:  # coupled channels are fine where they are the grouped convs' own positions
                units = positions if all(len(c) == 1 for c in classes) or classes == sorted(positions) else []
            reason = self._whole_reason(group, exclude, layer_names)
            if not reason and not units:
                reason = "couples channels of grouped convolutions unevenly"
            if reason:
                self.kept_whole[name] = reason
                continue
            unit_of = {r: u for u, members in enumerate(units) for r in members}
            layer_units = [
                frozenset(unit_of[r] for r in item.root_idxs) for item in group
                if isinstance(item.dep.target.module, ROOT_TYPES)
                and self.graph.is_out_channel_pruning_fn(item.dep.handler)
            ]
            info = PrunableGroup(name, len(units) * channel_groups, channel_groups,
                                 seen.stages.get(layers[0], "flat"), layer_names)
            root, handler = group[0].dep.target.module, group[0].dep.handler
            self._groups.append(_Group(info, root, handler, group, units, tuple(set(layer_units))))
        self._groups.sort(key=lambda g: order[model.get_submodule(g.info.name)])

    def _unmap_splits(self) -> None:
        """Groups crossing a channel split are kept whole, so their index mapping is not needed; Torch-Pruning's
        mapping for `chunk` can index past its offsets (ShuffleNet), so it is switched off."""
        for node in self.graph.module2node.values():
            if node.type in (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND):
                node.enable_index_mapping = False
                for other in [node, *node.inputs, *node.outputs]:
                    for dep in other.dependencies:
                        if dep.source is node or dep.target is node:
                            dep.index_mapping[0] = None

    @property
    def groups(self) -> list[PrunableGroup]:
        """The prunable groups, in module order of the layers they are named after."""
        return [g.info for g in self._groups]

    def _channel_groups(self) -> tuple[dict[nn.Module, int], dict[nn.Module, int]]:
        """Grouped convolutions (and group norms): channels must go in equal numbers from every group."""
        ins: dict[nn.Module, int] = {}
        outs: dict[nn.Module, int] = {}
        for m in self.model.modules():
            pruner = self.graph.get_pruner_of_module(m)
            if pruner is None or (isinstance(m, tp.ops.TORCH_CONV) and m.groups == m.out_channels):
                continue
            if pruner.get_in_channel_groups(m) > 1:
                ins[m] = pruner.get_in_channel_groups(m)
            if pruner.get_out_channel_groups(m) > 1:
                outs[m] = pruner.get_out_channel_groups(m)
        return ins, outs

    def _whole_reason(self, group: tp.Group, exclude: tuple[str, ...], layer_names: tuple[str, ...]) -> str:
        """Why a group must keep all its channels ('' when it may be pruned)."""
        if set(exclude) & set(layer_names):
            return "excluded"
        for dep, _ in group:
            node = dep.target
            if node.type == tp.ops.OPTYPE.OUTPUT or (
                node.module in self.output_layers and self.graph.is_out_channel_pruning_fn(dep.handler)
            ):
                return "reaches the network output"
            if isinstance(node.module, ChannelShuffle):
                return "crosses a channel shuffle"
            if node.type == tp.ops.OPTYPE.UNBIND:
                return "crosses an unbind"
            if node.type in (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.SLICE):
                if getattr(node.grad_fn, "_saved_dim", 1) in (1, -3):
                    return "crosses a channel split or slice"
        return ""

    def plan(
        self, keep: Mapping[str, float], importance: Scorer, round_to: int
    ) -> list[tuple[PrunableGroup, nn.Module, object, list[int]]]:
        """Which channels each group loses: its lowest-scored units (equally from each channel group), while
        every layer of the group keeps at least `round_to` of its channels (all, if it has fewer)."""
        plans = []
        for g in self._groups:
            info = g.info
            kept = kept_channels(info.channels, info.channel_groups, float(keep.get(info.name, 1.0)), round_to)
            if kept >= info.channels:
                continue
            scores = importance(g.group).detach().float().cpu()
            unit_scores = torch.stack([scores[members].mean() for members in g.units])
            ascending = torch.argsort(unit_scores, stable=True).tolist()
            step = max(1, round_to // math.gcd(round_to, info.channel_groups))
            forced: set[int] = set()
            for layer in g.layer_units:
                forced.update([u for u in reversed(ascending) if u in layer][:step])
            n_keep = kept // info.channel_groups
            if len(forced) > n_keep:
                n_keep = min(len(g.units), math.ceil(len(forced) / step) * step)
            drop = [u for u in ascending if u not in forced][: len(g.units) - n_keep]
            if drop:
                plans.append((info, g.root, g.handler, sorted(r for u in drop for r in g.units[u])))
        return plans

    def global_keep(self, keep: float, importance: Scorer, round_to: int) -> dict[str, float]:
        """Per-group keep ratios of one global threshold: the channels of all groups ranked by `importance`
        (scores comparable across groups; ties spread over the groups in proportion), each group keeping its
        channels above the threshold rounded by `kept_channels` (at least one multiple of `round_to`), the
        threshold placed where the rounded total comes closest to `keep` of the ranked channels. Groups too
        small to round stay whole and out of the ranking."""
        infos: list[PrunableGroup] = []
        ranked = []
        for g in self._groups:
            info = g.info
            if kept_channels(info.channels, info.channel_groups, 0.0, round_to) >= info.channels:
                continue
            per_group = info.channels // info.channel_groups
            mean = importance(g.group).detach().float().cpu().view(info.channel_groups, per_group).mean(0)
            place = torch.empty(per_group)
            place[torch.argsort(mean, descending=True, stable=True)] = torch.arange(per_group) / per_group
            ranked.append((mean, place, torch.full((per_group,), len(infos))))
            infos.append(info)
        if not infos:
            return {}
        score, place, owner = (torch.cat(column) for column in zip(*ranked))
        order = torch.argsort(place, stable=True)
        owners = owner[order[torch.argsort(score[order], descending=True, stable=True)]]
        target = keep * sum(info.channels for info in infos)

        def kept(top: int) -> list[int]:
            """Channels each group keeps when the `top` best-ranked slots survive."""
            counts = torch.bincount(owners[:top], minlength=len(infos)).tolist()
            return [kept_channels(i.channels, i.channel_groups, c * i.channel_groups / i.channels, round_to)
                    for i, c in zip(infos, counts)]

        low, high = 0, len(owners)  # the fewest survivors whose rounded total reaches the target
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if sum(kept(mid)) >= target else (mid + 1, high)
        best = min((n for n in (low - 1, low) if n >= 0), key=lambda n: abs(sum(kept(n)) - target))
        return {info.name: k / info.channels for info, k in zip(infos, kept(best))}

    def layer_groups(self) -> dict[str, dict[str, str]]:
        """Conv / linear layer name → the prunable group its output (`out`) and input (`in`) channels belong to;
        a side missing from a layer's entry keeps its width whatever the policy."""
        names = {m: n for n, m in self.model.named_modules()}
        out: dict[str, dict[str, str]] = {}
        for g in self._groups:
            for item in g.group:
                module = item.dep.target.module
                if isinstance(module, ROOT_TYPES):
                    side = "out" if self.graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
                    out.setdefault(names[module], {})[side] = g.info.name
        return out

    def unit_scores(self, importance: Scorer) -> dict[str, torch.Tensor]:
        """Group name → the score of each of its units (root channels pruned together), as `plan` ranks them."""
        out = {}
        for g in self._groups:
            scores = importance(g.group).detach().float().cpu()
            out[g.info.name] = torch.stack([scores[members].mean() for members in g.units])
        return out

    def apply(self, plans: list[tuple[PrunableGroup, nn.Module, object, list[int]]]) -> None:
        """Physically remove the planned channels, group after group."""
        for _, root, handler, idxs in plans:
            collect_group(self.graph, root, handler, idxs)[0].prune()


def _positions(channels: int, channel_groups: int) -> list[list[int]]:
    """Units of a group without coupled channels: position p of every channel group together."""
    per_group = channels // channel_groups
    return [[p + g * per_group for g in range(channel_groups)] for p in range(per_group)]
