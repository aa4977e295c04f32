"""Torch-Pruning's dependency graph, built and walked so that the CNNs of torchvision and timm yield their groups.

Four departures from `tp.DependencyGraph` as shipped:
- concat sizes are recorded from the real forward pass (Torch-Pruning infers them through the graph and
  fails on a concat of slices, DPN's dual paths);
- a group is collected by visiting each (layer, channel, root channel) once; Torch-Pruning re-walks every
  distinct subset of indices, which grows exponentially along chains of partial residuals (ReXNet);
- the walk records which root channels reach the same weight slice (a depthwise conv behind a concat, as
  in GhostNet, or a split-attention reshape): they form one *unit*, pruned or kept together;
- a reshape that splits channels into paths, (N, k·C) → (N, k, C, ...) as in selective-kernel attention,
  maps channel j·C + c to c; Torch-Pruning reads every such reshape as (N, C, k) and maps it to j·k + c;
- channel gates that run a Conv1d along the channel axis (ECA) are traced as the channel-wise gates they
  are: their 1-channel convs hold no per-channel weights and work on any number of channels.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.overrides import TorchFunctionMode
from torch_pruning._helpers import _HybridIndex
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.pruner import function

_CATS = {torch.cat, torch.concat, torch.concatenate}
_RESHAPES = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape}


class _RecordShapes(TorchFunctionMode):
    """Remember, keyed by grad_fn, the input channels of every channel concat of a forward pass and the
    shapes around every reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.concat_sizes: dict[object, list[int]] = {}
        self.reshapes: dict[object, tuple[torch.Size, torch.Size]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return out
        if func in _CATS:
            tensors = args[0] if args else kwargs.get("tensors", kwargs.get("inputs", ()))
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            if out.dim() > 1 and dim % out.dim() == 1:
                self.concat_sizes[out.grad_fn] = [t.shape[1] for t in tensors]
        elif func in _RESHAPES and isinstance(args[0], torch.Tensor):
            self.reshapes[out.grad_fn] = (args[0].shape, out.shape)
        return out


class _TileIndexMapping:
    """Index mapping across (N, k·C) → (N, k, C, ...): channel j·C + c upstream is channel c downstream."""

    def __init__(self, channels: int, paths: int, reverse: bool) -> None:
        self.channels, self.paths, self.reverse = channels, paths, reverse

    def __call__(self, idxs: list[_HybridIndex]) -> list[_HybridIndex]:
        if self.reverse:
            return list(dict.fromkeys(_HybridIndex(i.idx % self.channels, i.root_idx) for i in idxs))
        return [_HybridIndex(i.idx + j * self.channels, i.root_idx) for i in idxs for j in range(self.paths)]


class DependencyGraph(tp.DependencyGraph):
    """`tp.DependencyGraph` whose concat nodes know their real input sizes before any index mapping, and
    whose path-splitting reshapes map channels as they are laid out."""

    def __init__(self, shapes: _RecordShapes) -> None:
        super().__init__()
        self._shapes = shapes

    def _build_dependency(self, module2node: dict) -> None:
        super()._build_dependency(module2node)
        for node in module2node.values():
            sizes = self._shapes.concat_sizes.get(node.grad_fn) if node.type == tp.ops.OPTYPE.CONCAT else None
            if sizes is not None and len(sizes) == len(node.inputs):
                node.module.concat_sizes = list(sizes)

    def update_index_mapping(self) -> None:
        """Torch-Pruning's index mappings for the current channel counts, path-splitting reshapes corrected."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Maximum recursive depth")  # a shape it could not infer
            index_mapping.update_index_mapping(self)
        for node in self.module2node.values():
            shapes = self._shapes.reshapes.get(node.grad_fn) if node.type == tp.ops.OPTYPE.RESHAPE else None
            if shapes is None or len(shapes[0]) < 2 or len(shapes[1]) < 3:
                continue
            (_, before, *_), (_, paths, channels, *_) = shapes
            if paths < 2 or channels * paths != before:
                continue
            for out_node in node.outputs:
                for dep in node.dependencies:
                    if dep.target == out_node:
                        dep.index_mapping[0] = _TileIndexMapping(channels, paths, reverse=True)
                for dep in out_node.dependencies:
                    if dep.target == node:
                        dep.index_mapping[0] = _TileIndexMapping(channels, paths, reverse=False)


def build_graph(
    model: nn.Module, example_input: torch.Tensor, customized_pruners: dict
) -> DependencyGraph:
    """The dependency graph of `model` traced on `example_input`."""
    recorder = _RecordShapes()
    graph = DependencyGraph(recorder)
    with recorder, channel_gates_as_elementwise(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Maximum recursive depth")  # a shape it could not infer
        graph.build_dependency(
            model, example_inputs=example_input, verbose=False, customized_pruners=customized_pruners
        )
    return graph


def _channel_sequence_gates(model: nn.Module) -> list[nn.Module]:
    """Modules whose only weights are Conv1d layers reading a 1-channel sequence (the channels): ECA gates."""
    gates = []
    for m in model.modules():
        children = [c for c in m.children() if any(True for _ in c.parameters())]
        if children and all(isinstance(c, nn.Conv1d) for c in children) and children[0].in_channels == 1:
            gates.append(m)
    return gates


@contextmanager
def channel_gates_as_elementwise(model: nn.Module) -> Iterator[None]:
    """Inside the block, every channel-sequence gate runs as `x · σ(mean(x))`: the same channel coupling
    (channel i out from channel i in), without the reshapes that Torch-Pruning would read as a flatten."""
    gates = _channel_sequence_gates(model)
    for m in gates:
        m.forward = lambda x: x * x.mean(tuple(range(2, x.dim())), keepdim=True).sigmoid()
    try:
        yield
    finally:
        for m in gates:
            del m.forward


class _Units:
    """Union-find over root channels: two root channels that reach the same channel of a layer are one unit."""

    def __init__(self, roots: Iterable[int]) -> None:
        self.parent = {r: r for r in roots}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def classes(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for r in self.parent:
            out.setdefault(self.find(r), []).append(r)
        return sorted((sorted(c) for c in out.values()), key=lambda c: c[0])


def collect_group(
    graph: DependencyGraph, module: nn.Module, handler: Callable, idxs: Sequence[int]
) -> tuple[tp.Group, list[list[int]]]:
    """The pruning group of `idxs` of `module` (as `graph.get_pruning_group` makes it) and its units: the
    root indices in classes that must be pruned together, in order of their first index."""
    node = graph.module2node[module]
    if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        handler = function.prune_depthwise_conv_out_channels
    graph.update_index_mapping()
    start = [_HybridIndex(idx=i, root_idx=i) for i in idxs]
    root = Dependency(handler, handler, source=node, target=node)
    units = _Units(idxs)
    # (layer, pruning function) -> (its first dependency, channel -> the first root channel reaching it);
    # a channel reached again only joins its root to that unit, its walk on would add nothing new
    merged: dict[tuple, tuple[Dependency, dict[int, int]]] = {(node, handler): (root, {i: i for i in idxs})}
    stack = [(root, start)]
    while stack:
        dep, current = stack.pop()
        for new_dep in dep.target.dependencies:
            if not new_dep.is_triggered_by(dep.handler):
                continue
            mapped = current
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    mapped = mapping(mapped)
            if not mapped:
                continue
            owners = merged.setdefault((new_dep.target, new_dep.handler), (new_dep, {}))[1]
            fresh = []
            for i in mapped:
                first = owners.get(i.idx)
                if first is None:
                    owners[i.idx] = i.root_idx
                    fresh.append(i)
                else:
                    units.union(first, i.root_idx)
            if fresh:
                stack.append((new_dep, fresh))
    group = tp.Group()
    for dep, owners in merged.values():
        group.add_dep(dep, list(owners))
        group[len(group) - 1].root_idxs = list(owners.values())
    group._DG = graph
    return group, units.classes()


def all_groups(
    graph: DependencyGraph, root_types: tuple[type, ...]
) -> Iterator[tuple[tp.Group, list[list[int]]]]:
    """Every group with all its channels, rooted at the first unvisited conv / linear (as `get_all_groups`)."""
    visited: set[nn.Module] = set()
    for m in list(graph.module2node):
        if not isinstance(m, root_types) or m in visited:
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        group, units = collect_group(graph, m, pruner.prune_out_channels, range(pruner.get_out_channels(m)))
        visited.update(d.target.module for d, _ in group if graph.is_out_channel_pruning_fn(d.handler))
        yield group, units
