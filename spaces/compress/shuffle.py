"""Channel shuffle as a module, so the dependency graph sees it as one operation.

ShuffleNet interleaves channel groups with `view → transpose → view`. Traced op by op, those reshapes
look like flattening to Torch-Pruning, which then cannot build its graph at all (or maps indices
wrongly). `expose_channel_shuffles` rewrites the pattern (found with torch.fx) into a `ChannelShuffle`
module; while the dependency graph is built it runs as a single gather, and the groups it couples
are kept whole by the pruner (a permutation across the shuffle has no channel-wise mapping).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from spaces.layers import ChannelShuffle

_VIEWS = {"view", "reshape"}
_TRANSPOSES = {"transpose", "permute"}


@contextmanager
def shuffles_as_gather(model: nn.Module) -> Iterator[None]:
    """Run every ChannelShuffle of `model` as one gather (a single autograd node) inside the block."""
    shuffles = [m for m in model.modules() if isinstance(m, ChannelShuffle)]
    for m in shuffles:
        m.as_gather = True
    try:
        yield
    finally:
        for m in shuffles:
            m.as_gather = False


def _has_transpose(model: nn.Module, example_input: torch.Tensor) -> bool:
    """Whether the autograd graph of one forward contains a transpose or permute (cheap pre-check)."""
    with torch.enable_grad():
        out = model(example_input)
    outs = out if isinstance(out, (tuple, list)) else [out]
    stack = [t.grad_fn for t in outs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        name = fn.name()
        if name.startswith(("TransposeBackward", "PermuteBackward")):
            return True
        stack.extend(f for f, _ in fn.next_functions if f is not None)
    return False


def _op(node: fx.Node) -> str:
    """The method or function name a node calls ('' for other nodes)."""
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", "")
    return ""


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_group_swap(node: fx.Node) -> bool:
    if _op(node) == "transpose":
        dims = sorted(int(d) for d in node.args[1:3]) if len(node.args) >= 3 else []
        return dims == [1, 2]
    if _op(node) == "permute":
        dims = node.args[1:] if len(node.args) > 2 else node.args[1]
        return list(dims) == [0, 2, 1, 3, 4]
    return False


def _match(view_out: fx.Node) -> tuple[fx.Node, int] | None:
    """If `view_out` ends a channel shuffle, return (its 4-D input node, groups)."""
    if _op(view_out) not in _VIEWS | {"flatten"}:
        return None
    node = view_out.args[0]
    if isinstance(node, fx.Node) and _op(node) == "contiguous":
        node = node.args[0]
    if not isinstance(node, fx.Node) or not _is_group_swap(node):
        return None
    view_in = node.args[0]
    if not isinstance(view_in, fx.Node) or _op(view_in) not in _VIEWS:
        return None
    source = view_in.args[0]
    shape5, shape_in, shape_out = _shape(view_in), _shape(source), _shape(view_out)
    if shape5 is None or len(shape5) != 5 or shape_in is None or len(shape_in) != 4 or shape_in != shape_out:
        return None
    if shape5[1] * shape5[2] != shape_in[1] or shape5[3:] != shape_in[2:]:
        return None
    return source, int(shape5[1])


def expose_channel_shuffles(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """`model` with each `view → transpose(1, 2) → view` channel shuffle replaced by a ChannelShuffle module
    (a torch.fx GraphModule keeping every submodule name), or `model` itself when it has none."""
    if not _has_transpose(model, example_input):
        return model
    try:
        traced = fx.symbolic_trace(model)
        ShapeProp(traced).propagate(example_input)
    except Exception:  # not traceable symbolically: leave it to the dependency graph
        return model
    found = 0
    for node in list(traced.graph.nodes):
        match = _match(node)
        if match is None:
            continue
        source, groups = match
        name = f"channel_shuffle_{found}"
        traced.add_submodule(name, ChannelShuffle(groups))
        with traced.graph.inserting_after(node):
            replacement = traced.graph.call_module(name, (source,))
        node.replace_all_uses_with(replacement)
        found += 1
    if not found:
        return model
    traced.graph.eliminate_dead_code()
    traced.recompile()
    return traced
