"""Latency-aware greedy pruning (in the manner of HALP): from the whole network, repeatedly take the step — a group's
next narrower width, or the removal of a residual block — that loses the least importance per millisecond saved,
until a latency target is met.

Widths step along each group's offered widths (the lower edges of its latency staircase), so a step never buys a
width that runs no faster; the milliseconds come from a predictor (a latency table), the importance from the base's
channel scores on one scale across groups (Taylor's first-order loss change, or a criterion divided by its group's
mean), times the number of layers the group's channels feed or leave (the caller's `costs`), since a channel of a
residual stream is read and written by every block of its stage while a block's inner channel touches two layers.
"""

from __future__ import annotations

import copy
import random
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spaces.compress.compress import channel_graph, compress
from spaces.compress.depth import Block
from spaces.compress.importance import make_importance
from spaces.compress.prune import PrunableGroup
from spaces.compress.units import LayerGeometry

Predict = Callable[[Mapping[str, int], Sequence[str]], float]
Policy = tuple[dict[str, int], list[str]]  # group → width, and the blocks dropped


def removal_costs(scores: torch.Tensor, channels: int) -> list[float]:
    """Cumulative importance lost when a group of `channels` (scored per unit, any order) keeps its best
    `w` channels: entry `channels - w` is the summed scores of the `channels - w` least important ones."""
    ordered = torch.sort(scores.float()).values
    per_unit = max(1, round(channels / max(len(ordered), 1)))
    per_channel = ordered.repeat_interleave(per_unit)[:channels]
    return [0.0, *torch.cumsum(per_channel, 0).tolist()]


def channel_costs(
    base: nn.Module, example_input: torch.Tensor, exclude: Sequence[str], groups: Sequence[PrunableGroup],
    layers: Sequence[LayerGeometry], importance: str, calibration: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, list[float]]:
    """Group → `removal_costs` of its channels, times the layers its channels feed or leave. The scores are Taylor's
    |w·∂L/∂w| on the `calibration` batch (a first-order loss change, comparable across groups), else `importance`
    with each group's scores divided by their mean."""
    net, graph = channel_graph(copy.deepcopy(base).eval(), example_input, exclude)
    if calibration is not None:
        scorer = make_importance("taylor", net, calibration)
    else:
        scorer = make_importance(importance, net, None, comparable=True)
    scores = graph.unit_scores(scorer)
    touched = {g.name: sum(g.name in (layer.in_group, layer.out_group) for layer in layers) for g in groups}
    return {g.name: [touched[g.name] * c for c in removal_costs(scores[g.name], g.channels)] for g in groups}


def loss_per_cost(
    base: nn.Module, example_input: torch.Tensor, groups: Sequence[PrunableGroup], offered: Mapping[str, Sequence[int]],
    costs: Mapping[str, Sequence[float]], calibration: tuple[torch.Tensor, torch.Tensor], round_to: int,
    importance: str,
) -> float:
    """How much cross-entropy one unit of channel cost is worth: over the groups, the median of the loss rise measured
    on the `calibration` batch when the group alone is cut to its middle offered width, divided by the cost the
    greedy charges for that cut. A block's removal loss divided by it weighs on the channel costs' scale."""
    inputs, labels = calibration

    def loss(net: nn.Module) -> float:
        with torch.no_grad():
            return F.cross_entropy(net.eval()(inputs), labels).item()

    before = loss(base)
    ratios = []
    for g in groups:
        ws = list(offered[g.name])
        width = ws[(len(ws) - 1) // 2]
        cost = costs[g.name][g.channels - width]
        if width >= g.channels or cost <= 0:
            continue
        cut = compress(base, example_input, keep={g.name: width / g.channels}, round_to=round_to, importance=importance)
        ratios.append(max(loss(cut) - before, 0.0) / cost)
    return float(np.median(ratios)) if ratios and np.median(ratios) > 0 else 1.0


def latency_greedy(
    offered: Mapping[str, Sequence[int]], costs: Mapping[str, Sequence[float]], predict: Predict, target_ms: float,
    blocks: Mapping[str, Block] | None = None, start: Policy | None = None, fixed: Collection[str] = (),
) -> Policy:
    """Group → width, and the blocks dropped: the greedy walk until `predict(widths, dropped) <= target_ms`, or no
    step is left. A step is one group's next narrower offered width (ascending lists ending at the full width;
    `costs[group]` is `removal_costs` of its scores) or the removal of one of `blocks` (its loss, and the groups
    inside it, which stop stepping once it goes), whichever loses the least importance per millisecond saved.
    `start`: walk on from this policy instead of the whole network; `fixed`: groups and blocks never stepped."""
    widths, dropped = ({g: int(ws[-1]) for g, ws in offered.items()}, []) if start is None else \
        (dict(start[0]), list(start[1]))
    blocks = blocks or {}
    current = predict(widths, dropped)

    def paid(group: str) -> float:
        full = int(offered[group][-1])
        return costs[group][full - widths[group]]

    while current > target_ms:
        frozen = {g for name in dropped for g in blocks[name].groups} | set(fixed)
        steps: list[tuple[float, float, dict[str, int], list[str]]] = []
        for group, ws in offered.items():
            i = list(ws).index(widths[group])
            if i == 0 or group in frozen:
                continue
            trial = {**widths, group: int(ws[i - 1])}
            full = int(ws[-1])
            steps.append((costs[group][full - trial[group]] - paid(group), predict(trial, dropped), trial, dropped))
        for name, block in blocks.items():
            if name not in dropped and name not in fixed:
                lost = max(0.0, block.loss - sum(paid(g) for g in block.groups if g in widths))
                trial_dropped = [*dropped, name]
                steps.append((lost, predict(widths, trial_dropped), widths, trial_dropped))
        if not steps:
            break
        _, current, widths, dropped = min(
            steps, key=lambda s: (s[0] / (current - s[1]) if current > s[1] else float("inf"), s[1]))
    return widths, dropped


def mutate(
    policy: Policy, offered: Mapping[str, Sequence[int]], blocks: Mapping[str, Block], moves: int,
    rng: random.Random,
) -> tuple[Policy, set[str]]:
    """`policy` moved `moves` times at random — a group one offered width up or down (none inside a dropped block),
    or a block dropped or put back (a move in four, where there are blocks) — and the groups and blocks it moved."""
    widths, dropped = dict(policy[0]), list(policy[1])
    moved: set[str] = set()
    for _ in range(moves):
        if blocks and rng.random() < 0.25:
            name = rng.choice(sorted(blocks))
            dropped = [b for b in dropped if b != name] if name in dropped else [*dropped, name]
            moved.add(name)
            continue
        gone = {g for name in dropped for g in blocks[name].groups}
        group = rng.choice(sorted(set(offered) - gone))
        ws = list(offered[group])
        i = ws.index(widths[group]) + rng.choice((-1, 1))
        widths[group] = ws[min(max(i, 0), len(ws) - 1)]
        moved.add(group)
    return (widths, dropped), moved
