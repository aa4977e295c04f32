"""Static cost of a network: multiply-accumulates (fvcore) and parameter count."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass
class Cost:
    """MACs for one image (fvcore counts one multiply-add as one 'flop') and parameters."""

    macs: int
    params: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "flops": self.flops}


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def measure_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Count MACs with fvcore on one input of `input_shape` (C, H, W) and parameters."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape)
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        macs = int(analysis.total())
    model.train(was_training)
    return Cost(macs=macs, params=count_params(model))
