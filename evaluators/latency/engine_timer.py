"""Timing modules on a latency backend the way latency tables need: a unit against the reference kernel, a whole
network interleaved with an anchor network (a compression study's base), and the reference's milliseconds now.

Backends that hand out a runner for an ONNX file (ONNX Runtime) are timed run by run in this process, interleaved;
others (TensorRT, torch) are timed by their own `measure`, the reference or anchor measured just before and just
after, which cancels a drift slower than one measurement.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from evaluators.latency.base import LatencyBackend
from evaluators.latency.relative import REFERENCE_SHAPE, Relative, RelativeTimer, per_run_seconds, reference_module
from evaluators.latency.timing import Compared, interleaved
from evaluators.precision import convert_precision
from evaluators.to_onnx import export_onnx

Runner = Callable[[], object]
MAX_SPREAD = 0.10  # a paired measurement whose per-round speed-ups range wider than this share is taken again


@dataclass
class Paired:
    """A network timed interleaved with the anchor: its speed-up over the anchor (median of per-round ratios) with
    the spread of those ratios, and both medians in milliseconds as they ran."""

    speedup: float
    spread: float
    ms: float
    anchor_ms: float
    tries: int


class EngineTimer:
    """Times modules on `backend` at one precision and batch size (see the module)."""

    def __init__(self, backend: LatencyBackend, precision: str, batch_size: int, *, rounds: int = 3,
                 network_rounds: int = 7) -> None:
        self.backend, self.precision, self.batch_size = backend, precision, batch_size
        self.network_rounds = network_rounds
        self._folder = tempfile.TemporaryDirectory()
        self._count = 0
        self.runs_in_process = callable(getattr(backend, "runner", None))
        torch.manual_seed(0)
        self.reference = reference_module().eval()
        if self.runs_in_process:
            self._relative = RelativeTimer(self.runner(self.reference, REFERENCE_SHAPE), rounds=rounds)

    def runner(self, module: nn.Module, input_shape: tuple[int, ...]) -> Runner:
        """One run of `module` on the engine at the timer's precision and batch (ONNX Runtime: an exported session)."""
        self._count += 1
        path = export_onnx(module.eval(), input_shape, Path(self._folder.name) / f"m{self._count}.onnx",
                           self.batch_size)
        if self.precision != "fp32":
            path = convert_precision(path, path.with_suffix(f".{self.precision}.onnx"), self.precision, None)
        return self.backend.runner(path, self.batch_size)

    def _ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        return self.backend.measure(module, input_shape, self.precision, self.batch_size).median_ms

    def unit(self, module: nn.Module, input_shape: tuple[int, ...]) -> Relative:
        """`module`'s time over the reference kernel's."""
        if self.runs_in_process:
            return self._relative.measure(self.runner(module, input_shape))
        before = self._ms(self.reference, REFERENCE_SHAPE)
        ms = self._ms(module, input_shape)
        after = self._ms(self.reference, REFERENCE_SHAPE)
        ref = (before + after) / 2
        return Relative(ms / ref, abs(before - after) / ref, ms, ref, 1)

    def reference_ms(self) -> float:
        """The reference kernel's median milliseconds now: what turns reference units into milliseconds."""
        if self.runs_in_process:
            return self._relative.measure(self._relative.reference).reference_ms
        return self._ms(self.reference, REFERENCE_SHAPE)

    def paired(self, anchor: nn.Module | Runner, network: nn.Module | Runner, input_shape: tuple[int, ...],
               max_tries: int = 3) -> Paired:
        """`network`'s speed-up over `anchor`, timed interleaved; taken again (up to `max_tries`) while its
        per-round ratios spread wider than `MAX_SPREAD`, keeping the steadiest."""
        if not self.runs_in_process:
            return self._paired_by_measure(anchor, network, input_shape)
        a = anchor if callable(anchor) and not isinstance(anchor, nn.Module) else self.runner(anchor, input_shape)
        b = network if callable(network) and not isinstance(network, nn.Module) else self.runner(network, input_shape)
        best: tuple[float, Compared, Compared] | None = None
        for attempt in range(1, max_tries + 1):
            per = per_run_seconds(a)
            base, other = interleaved({"anchor": a, "net": b}, "anchor", rounds=self.network_rounds,
                                      runs=max(5, min(200, int(0.03 / max(per, 1e-6)))), warmup=5)
            spread = (other.speedup_high - other.speedup_low) / other.speedup
            if best is None or spread < best[0]:
                best = (spread, base, other)
            if spread <= MAX_SPREAD:
                break
        spread, base, other = best
        return Paired(other.speedup, spread, other.median_ms, base.median_ms, attempt)

    def _paired_by_measure(self, anchor: nn.Module, network: nn.Module, input_shape: tuple[int, ...]) -> Paired:
        before = self._ms(anchor, input_shape)
        ms = self._ms(network, input_shape)
        after = self._ms(anchor, input_shape)
        ref = (before + after) / 2
        return Paired(ref / ms, abs(before - after) / ref, ms, ref, 1)
