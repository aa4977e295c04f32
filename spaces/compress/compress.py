"""`compress`: a trained network made physically smaller — channels pruned, layers factorized."""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from spaces.compress.depth import drop_blocks, residual_blocks
from spaces.compress.errors import CompressError
from spaces.compress.importance import make_importance
from spaces.compress.lowrank import FORMS, factorizable, factorize_layers, kxk_conv
from spaces.compress.prune import ChannelGraph, PrunableGroup, probe
from spaces.compress.shuffle import expose_channel_shuffles

Ratios = float | Mapping[str, float]
POLICIES = ("group", "global")


def channel_graph(model: nn.Module, example_input: torch.Tensor, exclude: Sequence[str]) -> tuple[nn.Module, ChannelGraph]:
    """`model` (modified in place: channel shuffles exposed) and its dependency graph with the prunable groups."""
    net = expose_channel_shuffles(model.eval(), example_input)
    return net, ChannelGraph(net, example_input, tuple(exclude))


def prunable_groups(model: nn.Module, example_input: torch.Tensor, exclude: Sequence[str] = ()) -> list[PrunableGroup]:
    """The groups `compress(keep=...)` can prune in `model`, named after their first conv / linear layer."""
    return channel_graph(copy.deepcopy(model), example_input, exclude)[1].groups


def check_exclusions(model: nn.Module, example_input: torch.Tensor, exclude: Sequence[str]) -> None:
    """A CompressError naming every entry of `exclude` that is no conv or linear layer of `model`, with the
    prunable groups it could name instead; an exclusion that matches nothing would silently prune that layer."""
    layers = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    unknown = [name for name in exclude if name not in layers]
    if not unknown:
        return
    groups = [g.name for g in prunable_groups(model, example_input)]
    shown = ", ".join(groups[:30]) + (f", … ({len(groups)} in all)" if len(groups) > 30 else "")
    raise CompressError(
        f"space.exclude: no conv or linear layer named {', '.join(map(repr, unknown))} in the base network; "
        f"name a prunable group ({shown or 'none'}) or any conv / linear layer of one"
    )


def check_prunable(model: nn.Module, example_input: torch.Tensor, exclude: Sequence[str]) -> None:
    """A CompressError where no group of `model` is left to prune once `exclude` is left out: every candidate would
    keep every channel, a "compression" of the unchanged network whose speed-up is timing noise."""
    if prunable_groups(model, example_input, exclude):
        return
    groups = [g.name for g in prunable_groups(model, example_input)] if exclude else []
    if groups:
        raise CompressError(
            f"space.exclude: leaves none of the base network's {len(groups)} prunable groups ({', '.join(groups[:8])}"
            f"{', …' if len(groups) > 8 else ''}), so no candidate would be pruned; exclude fewer, or search only "
            "ranks and precisions with space.keep: [1.0, 1.0]"
        )
    raise CompressError("space.base.model: the base network has no group of channels that can be pruned; search only "
                        "ranks and precisions with space.keep: [1.0, 1.0]")


def factorizable_layers(model: nn.Module, example_input: torch.Tensor) -> dict[str, str]:
    """Layers `compress(rank=...)` can factorize (called as modules in the forward pass) → their stage."""
    stages = probe(model, example_input).stages
    names = {m: n for n, m in model.named_modules()}
    return {names[m]: stage for m, stage in stages.items() if factorizable(m)}


def global_keep_ratios(
    model: nn.Module, example_input: torch.Tensor, keep: float, importance: str = "bn_scale", round_to: int = 8,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None, exclude: Sequence[str] = (),
) -> dict[str, float]:
    """The per-group keep ratios `compress(policy="global")` cuts `model` at: group name → kept share."""
    net, graph = channel_graph(copy.deepcopy(model).eval(), example_input, exclude)
    return graph.global_keep(float(keep), make_importance(importance, net, calibration, comparable=True), round_to)


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
        net, graph = channel_graph(copy.deepcopy(model), example_input, exclude)
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
    policy: str = "group",
    form: str | Mapping[str, str] | None = None,
    drop: Sequence[str] = (),
) -> nn.Module:
    """A physically smaller copy of `model` (left untouched).

    `keep`: with `policy="group"`, the share of channels each prunable group keeps — one ratio for all,
    or a mapping from group name (see `prunable_groups`) to ratio; missing groups keep everything. With
    `policy="global"`, one share of all prunable channels of the network (Network Slimming's global
    threshold): channels are ranked across groups — raw |γ| for `bn_scale`, `l1` and `taylor` divided by
    their group's mean (see `importance.py`) — so groups lose different amounts (`global_keep_ratios`).
    Channel counts are rounded to a multiple of `round_to` (at least one); the lowest-ranked channels by
    `importance` (`l1`, `bn_scale` or `taylor`, which needs a `calibration` batch of inputs and labels) go.
    Groups named in (or containing a layer named in) `exclude` are not pruned. When pruning, layers the
    eval-mode forward never calls (auxiliary heads) are removed from the copy, checked to leave the output
    unchanged.
    `rank`: rank ratios for low-rank factorization — one for every factorizable layer, or a mapping
    from layer name to ratio; applied after pruning, only where it saves parameters. `form`: how a k×k
    conv is factorized, `spatial` (default) or `tucker2` — one for every k×k conv in `rank`, or a
    mapping from layer name to form (see `lowrank.py`).
    `drop`: residual blocks (module paths, see `spaces.compress.depth.residual_blocks`) replaced by the identity,
    after pruning and before factorizing.
    Raises CompressError naming the layer or group it cannot handle.
    """
    if policy not in POLICIES:
        raise CompressError(f"policy {policy!r}: expected one of {', '.join(POLICIES)}")
    net = copy.deepcopy(model).eval()
    expected = _run(net, example_input)
    uniform = isinstance(keep, (int, float))
    if policy == "global" and not uniform:
        raise CompressError(
            f"keep: the global policy takes one share for the whole network (a number), got {type(keep).__name__}"
        )
    if (float(keep) < 1) if uniform else any(float(v) < 1 for v in dict(keep).values()):
        net, graph = channel_graph(net, example_input, exclude)
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
        scorer = make_importance(importance, net, calibration, comparable=policy == "global")
        if policy == "global":
            keep_map = graph.global_keep(float(keep), scorer, round_to)
        graph.apply(graph.plan(keep_map, scorer, round_to))
        net.zero_grad(set_to_none=True)
        _check_pruned(model, net, example_input, expected, keep_map, importance, calibration, round_to, exclude)
    if drop:
        removable = {b.name for b in residual_blocks(model, example_input)}
        unknown = [name for name in drop if name not in removable]
        if unknown:
            raise CompressError(f"drop: {', '.join(map(repr, unknown))} is no removable residual block of the network "
                                f"(those are {', '.join(sorted(removable)) or 'none'})")
        drop_blocks(net, drop)
    if rank is not None:
        layers = factorizable_layers(net, example_input)
        ranks = {n: float(rank) for n in layers} if isinstance(rank, (int, float)) else dict(rank)
        factorize_layers(net, ranks, round_to, _forms(net, ranks, form))
    elif form:
        raise CompressError("form: a factorization form needs a rank; give rank too")
    return net


def _forms(model: nn.Module, ranks: Mapping[str, float], form: str | Mapping[str, str] | None) -> dict[str, str]:
    """Layer → factorization form: one form for every k×k conv in `ranks`, or the mapping as given."""
    if form is None:
        return {}
    if isinstance(form, str):
        if form not in FORMS:
            raise CompressError(f"form {form!r}: expected one of {', '.join(FORMS)}")
        modules = dict(model.named_modules())
        return {n: form for n in ranks if n in modules and kxk_conv(modules[n])}
    missing = sorted(set(form) - set(ranks))
    if missing:
        raise CompressError(f"form: layer(s) {missing} have no rank ratio; give them one in rank")
    return dict(form)
