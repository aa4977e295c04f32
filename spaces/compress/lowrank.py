"""Low-rank factorization: one layer becomes two or three thinner ones.

- Linear (out × in) → Linear(in → r) then Linear(r → out): W ≈ U_r Σ_r V_rᵀ (truncated SVD).
- 1×1 conv: the same on the (out × in) weight, the stride on the first conv.
- k×k conv, form `spatial` (the default) → k×1 conv (in → r) then 1×k conv (r → out) (Tai et al. 2016):
  the SVD of the weight reshaped to (in·k) × (out·k); exact at r = min(in·k, out·k).
- k×k conv, form `tucker2` (Kim et al. 2016) → 1×1 conv (in → R_in), k×k core conv (R_in → R_out, the
  original stride, padding and dilation), 1×1 conv (R_out → out, the original bias), initialised by HOSVD;
  R_in and R_out are the rank ratio of in and out. Parameters: in·R_in + k_h·k_w·R_in·R_out + R_out·out
  (+ out bias); exact at R_in = in, R_out = out.

A layer is factorized only where the new layers hold fewer parameters than the one they replace.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn

from spaces.compress.errors import CompressError

FORMS = ("spatial", "tucker2")


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


def kxk_conv(module: nn.Module) -> bool:
    """A factorizable conv with a k×k kernel (k > 1), the layers a factorization form applies to."""
    return factorizable(module) and isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)


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


def _rounded(target: float, full: int, round_to: int) -> int:
    step = max(1, round_to)
    return min(max(int(math.floor(target / step + 0.5)) * step, step), full)


def rank_for(module: nn.Module, ratio: float, round_to: int = 8) -> int:
    """`ratio` of the full rank, rounded to a multiple of `round_to` (at least `round_to`, at most full)."""
    return _rounded(ratio * full_rank(module), full_rank(module), round_to)


def tucker2_ranks(conv: nn.Conv2d, ratio: float, round_to: int = 8) -> tuple[int, int]:
    """(R_in, R_out): `ratio` of the conv's input and output channels, each rounded to a multiple of
    `round_to` (at least `round_to`), at most the rank of its unfolding (in, resp. out; fewer where
    out·k_h·k_w < in, resp. in·k_h·k_w < out)."""
    out_ch, in_ch, kh, kw = conv.weight.shape
    return (_rounded(ratio * in_ch, min(in_ch, out_ch * kh * kw), round_to),
            _rounded(ratio * out_ch, min(out_ch, in_ch * kh * kw), round_to))


def tucker2_params(conv: nn.Conv2d, in_rank: int, out_rank: int) -> int:
    """Weights (and bias) of the three Tucker-2 layers: in·R_in + k_h·k_w·R_in·R_out + R_out·out (+ out)."""
    out_ch, in_ch, kh, kw = conv.weight.shape
    bias = 0 if conv.bias is None else out_ch
    return in_ch * in_rank + kh * kw * in_rank * out_rank + out_rank * out_ch + bias


def form_params(module: nn.Module, ratio: float, round_to: int = 8, form: str | None = None) -> int:
    """Parameters of `module` factorized at rank ratio `ratio` in `form` (None: its default form)."""
    if form == "tucker2":
        return tucker2_params(module, *tucker2_ranks(module, ratio, round_to))
    return factorized_params(module, rank_for(module, ratio, round_to))


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


@torch.no_grad()
def factorize_tucker2(conv: nn.Conv2d, in_rank: int, out_rank: int) -> nn.Sequential:
    """A k×k conv as Tucker-2 by HOSVD: U_out, U_in the leading left singular vectors of the weight's
    mode-out and mode-in unfoldings, core = W ×_out U_outᵀ ×_in U_inᵀ; 1×1 (U_inᵀ), k×k (core), 1×1 (U_out)."""
    w = conv.weight.double()
    out_ch, in_ch, kh, kw = w.shape
    u_out = torch.linalg.svd(w.reshape(out_ch, -1), full_matrices=False)[0][:, :out_rank]
    u_in = torch.linalg.svd(w.transpose(0, 1).reshape(in_ch, -1), full_matrices=False)[0][:, :in_rank]
    core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)
    reduce = nn.Conv2d(in_ch, in_rank, 1, bias=False)
    body = nn.Conv2d(in_rank, out_rank, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False)
    expand = nn.Conv2d(out_rank, out_ch, 1, bias=conv.bias is not None)
    reduce.weight.copy_(u_in.t().reshape(in_rank, in_ch, 1, 1))
    body.weight.copy_(core)
    expand.weight.copy_(u_out.reshape(out_ch, out_rank, 1, 1))
    if conv.bias is not None:
        expand.bias.copy_(conv.bias)
    return nn.Sequential(reduce, body, expand)


def factorize(module: nn.Module, ratio: float, round_to: int = 8, form: str | None = None) -> nn.Sequential | None:
    """`module` factorized at rank ratio `ratio` in `form` (None: SVD, spatial SVD for a k×k conv), or None
    where that would not save parameters."""
    if ratio >= 1 or not factorizable(module):
        return None
    if form_params(module, ratio, round_to, form) >= sum(p.numel() for p in module.parameters()):
        return None
    if form == "tucker2":
        return factorize_tucker2(module, *tucker2_ranks(module, ratio, round_to))
    rank = rank_for(module, ratio, round_to)
    return factorize_linear(module, rank) if isinstance(module, nn.Linear) else factorize_conv(module, rank)


def factorize_layers(
    model: nn.Module, ranks: Mapping[str, float], round_to: int = 8, forms: Mapping[str, str] | None = None
) -> list[str]:
    """Replace, in place, each named layer by its factorization at its rank ratio, in its form from `forms`
    (default: SVD, spatial SVD for a k×k conv); returns the layers that were factorized (the others would not
    have saved parameters)."""
    forms = dict(forms or {})
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
        form = forms.get(name)
        if form is not None and form not in FORMS:
            raise CompressError(f"form: layer {name!r} has form {form!r}; expected one of {', '.join(FORMS)}")
        if form is not None and not kxk_conv(module):
            raise CompressError(
                f"form: layer {name!r} ({type(module).__name__}) is not a k×k conv; forms apply to k×k convs "
                "(a Linear or 1×1 conv is factorized by SVD)"
            )
        replacement = factorize(module, ratio, round_to, form)
        if replacement is None:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
        done.append(name)
    return done
