"""One forward pass with hooks: how the space learns what the eval-mode forward really calls, and with what."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

Hook = Callable[[nn.Module, tuple, object], None]


def run_hooked(net: nn.Module, modules: Iterable[nn.Module], hook: Hook, example_input: torch.Tensor) -> object:
    """`net`'s output on `example_input` (no gradients), run once with `hook` as the forward hook of each of
    `modules`."""
    hooks = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            return net(example_input)
    finally:
        for h in hooks:
            h.remove()
