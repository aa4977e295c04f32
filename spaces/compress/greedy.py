"""Latency-aware greedy pruning (in the manner of HALP): from the whole network, repeatedly step the group whose
next narrower width loses the least importance per millisecond saved, until a latency target is met.

Widths step along each group's offered widths (the lower edges of its latency staircase), so a step never buys a
width that runs no faster; the milliseconds come from a predictor (a latency table), the importance from the base's
channel scores on one scale across groups (Taylor's first-order loss change, or a criterion divided by its group's
mean), times the number of layers the group's channels feed or leave (the caller's `costs`), since a channel of a
residual stream is read and written by every block of its stage while a block's inner channel touches two layers.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

Predict = Callable[[Mapping[str, int]], float]


def removal_costs(scores: torch.Tensor, channels: int) -> list[float]:
    """Cumulative importance lost when a group of `channels` (scored per unit, any order) keeps its best
    `w` channels: entry `channels - w` is the summed scores of the `channels - w` least important ones."""
    ordered = torch.sort(scores.float()).values
    per_unit = max(1, round(channels / max(len(ordered), 1)))
    per_channel = ordered.repeat_interleave(per_unit)[:channels]
    return [0.0, *torch.cumsum(per_channel, 0).tolist()]


def latency_greedy(
    offered: Mapping[str, Sequence[int]], costs: Mapping[str, Sequence[float]], predict: Predict, target_ms: float,
) -> dict[str, int]:
    """Group → width: the greedy walk down the offered widths (ascending lists ending at the full width) until
    `predict(widths) <= target_ms`, or no group can step further. `costs[group]` is `removal_costs` of its scores."""
    widths = {g: int(ws[-1]) for g, ws in offered.items()}
    current = predict(widths)
    while current > target_ms:
        best: tuple[float, str, int, float] | None = None
        for group, ws in offered.items():
            i = list(ws).index(widths[group])
            if i == 0:
                continue
            narrower = int(ws[i - 1])
            trial = {**widths, group: narrower}
            after = predict(trial)
            saved = current - after
            full = int(ws[-1])
            lost = costs[group][full - narrower] - costs[group][full - widths[group]]
            ratio = lost / saved if saved > 0 else float("inf")
            if best is None or ratio < best[0] or (ratio == best[0] and saved > current - best[3]):
                best = (ratio, group, narrower, after)
        if best is None:
            break
        _, group, narrower, current = best
        widths[group] = narrower
    return widths
