"""`compress`: a trained network made physically smaller — channels pruned, layers factorized."""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from spaces.compress.errors import CompressError
from spaces.compress.importance import make_importance
from spaces.compress.lowrank import factorizable, factorize_layers
from spaces.compress.prune import ChannelGraph, PrunableGroup, probe
from spaces.compress.shuffle import expose_channel_shuffles

Ratios = float | Mapping[str, float]


def _graph(model: nn.Module, example_input: torch.Tensor, exclude: Sequence[str]) -> tuple[nn.Module, ChannelGraph]:
    net = expose_channel_shuffles(model.eval(), example_input)
    return net, ChannelGraph(net, example_input, tuple(exclude))


def prunable_groups(model: nn.Module, example_input: torch.Tensor, exclude: Sequence[str] = ()) -> list[PrunableGroup]:
    """The groups `compress(keep=...)` can prune in `model`, named after their first conv / linear layer."""
    return _graph(copy.deepcopy(model), example_input, exclude)[1].groups


def factorizable_layers(model: nn.Module, example_input: torch.Tensor) -> dict[str, str]:
    """Layers `compress(rank=...)` can factorize (called as modules in the forward pass) → their stage."""
    stages = probe(model, example_input).stages
    names = {m: n for n, m in model.named_modules()}
    return {names[m]: stage for m, stage in stages.items() if factorizable(m)}


def _run(model: nn.Module, example_input: torch.Tensor) -> torch.Size:
    with torch.no_grad():
        out = model.eval()(example_input)
    return out.shape


def _check_pruned(
    model: nn.Module, pruned: nn.Module, example_input: torch.Tensor, expected: torch.Size,
    keep: Mapping[str, float], importance: str, calibration: tuple[torch.Tensor, torch.Tensor] | None,
    round_to: int, exclude: Sequence[str],
) -> None:
    """Run the pruned network once; if it fails, find the group that breaks it and name it."""
    try:
        if _run(pruned, example_input) == expected:
            return
        problem = "it changed the output shape"
    except Exception as exc:  # any failure of the pruned forward pass
        problem = f"{type(exc).__name__}: {exc}"
    for name, ratio in keep.items():
        if ratio >= 1:
            continue
        net, graph = _graph(copy.deepcopy(model), example_input, exclude)
        graph.apply(graph.plan({name: ratio}, make_importance(importance, net, calibration), round_to))
        try:
            ok = _run(net, example_input) == expected
        except Exception:
            ok = False
        if not ok:
            raise CompressError(
                f"cannot prune group '{name}': the pruned network does not run ({problem}); "
                f"keep it whole with exclude=['{name}']"
            )
    raise CompressError(f"the pruned network does not run ({problem})")


def compress(
    model: nn.Module,
    example_input: torch.Tensor,
    keep: Ratios = 1.0,
    rank: Ratios | None = None,
    round_to: int = 8,
    importance: str = "l1",
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    exclude: Sequence[str] = (),
) -> nn.Module:
    """A physically smaller copy of `model` (left untouched).

    `keep`: the share of channels each prunable group keeps — one ratio for all, or a mapping from
    group name (see `prunable_groups`) to ratio; missing groups keep everything. Channel counts are
    rounded to a multiple of `round_to`; the lowest-ranked channels by `importance` (`l1`, `bn_scale`
    or `taylor`, which needs a `calibration` batch of inputs and labels) go. Groups named in (or
    containing a layer named in) `exclude` are not pruned. When pruning, layers the eval-mode forward
    never calls (auxiliary heads) are removed from the copy, checked to leave the output unchanged.
    `rank`: rank ratios for low-rank factorization — one for every factorizable layer, or a mapping
    from layer name to ratio; applied after pruning, only where it saves parameters.
    Raises CompressError naming the layer or group it cannot handle.
    """
    net = copy.deepcopy(model).eval()
    expected = _run(net, example_input)
    uniform = isinstance(keep, (int, float))
    if (float(keep) < 1) if uniform else any(float(v) < 1 for v in dict(keep).values()):
        net, graph = _graph(net, example_input, exclude)
        names = [g.name for g in graph.groups]
        if uniform:
            keep_map = {n: float(keep) for n in names}
        else:
            keep_map = {str(k): float(v) for k, v in keep.items()}
            unknown = sorted(set(keep_map) - set(names) - set(graph.kept_whole))
            if unknown:
                raise CompressError(
                    f"keep: unknown group(s) {unknown}; prunable groups: {', '.join(names) or 'none'}"
                )
        bad = {k: v for k, v in keep_map.items() if not 0 < v <= 1}
        if bad:
            raise CompressError(f"keep: ratios must be in (0, 1], got {bad}")
        graph.apply(graph.plan(keep_map, make_importance(importance, net, calibration), round_to))
        net.zero_grad(set_to_none=True)
        _check_pruned(model, net, example_input, expected, keep_map, importance, calibration, round_to, exclude)
    if rank is not None:
        layers = factorizable_layers(net, example_input)
        ranks = {n: float(rank) for n in layers} if isinstance(rank, (int, float)) else dict(rank)
        factorize_layers(net, ranks, round_to)
    return net
