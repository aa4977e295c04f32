"""Channel importance criteria, ranking the channels of one dependency group (Torch-Pruning scorers).

- `l1`: L1 norm of every weight slice the group removes (group magnitude, Li et al. 2017).
- `bn_scale`: |γ| of the group's BatchNorm layers (Network Slimming, Liu et al. 2017); groups with no
  BatchNorm fall back to `l1`.
- `taylor`: |w · ∂L/∂w| summed over the group (Molchanov et al. 2019), with gradients of the
  cross-entropy on a calibration batch; layers without a gradient fall back to `l1`.

Comparable scores (`comparable=True`, for one ranking across all groups, the global policy): `bn_scale` keeps
raw |γ| — after sparsity training the scales themselves say which channels matter, across layers (Network
Slimming); a group without BatchNorm is scored by `l1` divided by its group's mean, times the mean |γ| of the
network. `l1` and `taylor` grow with a layer's fan-in, so each group's scores are divided by their mean:
every group then averages 1, and a channel ranks by how it compares with the rest of its group.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from spaces.compress.errors import CompressError

CRITERIA = ("l1", "bn_scale", "taylor")

Scorer = Callable[[tp.Group], torch.Tensor]


def _scorer(name: str) -> tp.importance.Importance:
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)
    return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)


def taylor_gradients(model: nn.Module, calibration: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Fill `.grad` with the gradient of the cross-entropy on one calibration batch (eval-mode BatchNorm)."""
    x, y = calibration
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        F.cross_entropy(model(x), y).backward()


def _mean_bn_scale(model: nn.Module) -> float:
    scales = [m.weight.detach().abs().flatten() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return float(torch.cat(scales).mean()) if scales else 1.0


def _by_mean(scores: torch.Tensor) -> torch.Tensor:
    return scores / scores.mean().clamp_min(torch.finfo(scores.dtype).tiny)


def make_importance(
    name: str, model: nn.Module, calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    comparable: bool = False,
) -> Scorer:
    """A function scoring each channel of a group (higher = more important) by criterion `name`;
    `comparable`: scores on one scale across groups (see the module docstring)."""
    if name not in CRITERIA:
        raise CompressError(f"importance {name!r}: expected one of {', '.join(CRITERIA)}")
    if name == "taylor":
        if calibration is None:
            raise CompressError("importance 'taylor' needs a calibration batch (inputs, labels) for its gradients")
        taylor_gradients(model, calibration)
    primary, fallback = _scorer(name), _scorer("l1")
    bn_mean = _mean_bn_scale(model) if comparable and name == "bn_scale" else 1.0

    def score(group: tp.Group) -> torch.Tensor:
        try:
            scores = primary(group)
        except AttributeError:  # a layer the calibration batch did not reach has no gradient
            scores = None
        if scores is not None and (name == "bn_scale" or not comparable):
            return scores
        scores = fallback(group) if scores is None else scores
        return _by_mean(scores) * bn_mean if comparable else scores

    return score
