"""Low-rank factorization by truncated SVD: one layer becomes two thinner ones.

- Linear (out × in) → Linear(in → r) then Linear(r → out): W ≈ U_r Σ_r V_rᵀ.
- 1×1 conv: the same on the (out × in) weight, the stride on the first conv.
- k×k conv → k×1 conv (in → r) then 1×k conv (r → out) (Tai et al. 2016): the SVD of the weight
  reshaped to (in·k) × (out·k); exact at r = min(in·k, out·k).

A layer is factorized only where the two layers hold fewer parameters than the one they replace.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn

from spaces.compress.errors import CompressError


def factorizable(module: nn.Module) -> bool:
    """Linear, or an ungrouped 2-D conv (1×1, or k×k with k > 1 both ways) with zero padding."""
    if type(module) is nn.Linear:
        return True
    if type(module) is not nn.Conv2d or module.groups != 1 or module.padding_mode != "zeros":
        return False
    if isinstance(module.padding, str):
        return False
    kh, kw = module.kernel_size
    return (kh, kw) == (1, 1) or (kh > 1 and kw > 1)


def full_rank(module: nn.Module) -> int:
    """The rank at which the factorization is exact."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    kh, kw = module.kernel_size
    return min(module.in_channels * kh, module.out_channels * kw)


def factorized_params(module: nn.Module, rank: int) -> int:
    """Weights (and bias) of the two layers replacing `module` at `rank`."""
    bias = 0 if module.bias is None else module.bias.numel()
    if isinstance(module, nn.Linear):
        return rank * (module.in_features + module.out_features) + bias
    kh, kw = module.kernel_size
    return rank * (module.in_channels * kh + module.out_channels * kw) + bias


def rank_for(module: nn.Module, ratio: float, round_to: int = 8) -> int:
    """`ratio` of the full rank, rounded to a multiple of `round_to` (at least `round_to`, at most full)."""
    full = full_rank(module)
    step = max(1, round_to)
    r = int(math.floor(ratio * full / step + 0.5)) * step
    return min(max(r, step), full)


def _svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B the best rank-`rank` approximation of `matrix`, √Σ split evenly between them."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()


@torch.no_grad()
def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Two Linear layers whose product is the rank-`rank` SVD of `layer` (bias on the second)."""
    a, b = _svd(layer.weight, rank)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    first.weight.copy_(b)
    second.weight.copy_(a)
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


@torch.no_grad()
def factorize_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """A 1×1 conv as two 1×1 convs; a k×k conv as a k×1 conv followed by a 1×k conv (spatial SVD)."""
    out_ch, in_ch, kh, kw = conv.weight.shape
    bias = conv.bias is not None
    if (kh, kw) == (1, 1):
        a, b = _svd(conv.weight.view(out_ch, in_ch), rank)
        first = nn.Conv2d(in_ch, rank, 1, conv.stride, conv.padding, conv.dilation, bias=False)
        second = nn.Conv2d(rank, out_ch, 1, bias=bias)
        first.weight.copy_(b.view(rank, in_ch, 1, 1))
        second.weight.copy_(a.view(out_ch, rank, 1, 1))
    else:
        (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
        matrix = conv.weight.permute(1, 2, 0, 3).reshape(in_ch * kh, out_ch * kw)
        a, b = _svd(matrix, rank)
        first = nn.Conv2d(in_ch, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        second = nn.Conv2d(rank, out_ch, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias)
        first.weight.copy_(a.view(in_ch, kh, rank).permute(2, 0, 1).unsqueeze(-1))
        second.weight.copy_(b.view(rank, out_ch, kw).permute(1, 0, 2).unsqueeze(2))
    if bias:
        second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def factorize(module: nn.Module, ratio: float, round_to: int = 8) -> nn.Sequential | None:
    """`module` factorized at `ratio` of its full rank, or None where that would not save parameters."""
    if ratio >= 1 or not factorizable(module):
        return None
    rank = rank_for(module, ratio, round_to)
    if factorized_params(module, rank) >= sum(p.numel() for p in module.parameters()):
        return None
    return factorize_linear(module, rank) if isinstance(module, nn.Linear) else factorize_conv(module, rank)


def factorize_layers(model: nn.Module, ranks: Mapping[str, float], round_to: int = 8) -> list[str]:
    """Replace, in place, each named layer by its factorization at its rank ratio; returns the layers that
    were factorized (the others would not have saved parameters)."""
    done = []
    for name, ratio in ranks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CompressError(f"rank: no layer named {name!r} in the model") from None
        if not factorizable(module):
            raise CompressError(
                f"rank: layer {name!r} ({type(module).__name__}) cannot be factorized; expected a Linear or an "
                "ungrouped Conv2d (1×1 or k×k)"
            )
        replacement = factorize(module, ratio, round_to)
        if replacement is None:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
        done.append(name)
    return done
