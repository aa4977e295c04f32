"""Quick fine-tune: a few epochs of SGD with a cosine schedule, optional distillation and BatchNorm sparsity,
then accuracy."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluators.data import DataBundle, Split


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the candidate fails its trial with this reason."""


@dataclass
class TrainSettings:
    """How long and how hard a candidate is fine-tuned. `bn_l1`: weight λ of the L1 penalty λ·Σ|γ| on every
    BatchNorm scale (Network Slimming's sparsity training); 0 leaves training as it is."""

    epochs: float = 3.0
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.0
    bn_l1: float = 0.0
    device: str = "cpu"


@dataclass
class TrainResult:
    """What a quick fine-tune reports."""

    accuracy: float
    final_loss: float
    steps: int
    seconds: float


def resolve_device(name: str) -> str:
    """The device a fine-tune runs on: `auto` is the CUDA GPU where torch sees one, else the CPU.
    Asking for `cuda` where there is none raises ValueError saying what is missing."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.device=cuda, but torch.cuda.is_available() is False (it needs an NVIDIA GPU, its driver and a "
            "CUDA build of torch); set train.device=auto or cpu"
        )
    return name


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s weights are (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


@contextmanager
def placed(device: str, *models: nn.Module | None) -> Iterator[None]:
    """`models` moved to `device` inside the block and back to the CPU after it, where export, cost counting
    and the CPU engines read them."""
    present = [m for m in models if m is not None]
    for m in present:
        m.to(device)
    try:
        yield
    finally:
        for m in present:
            m.to("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on `split`, in eval mode, on the device the model is on."""
    model.eval()
    device = model_device(model)
    correct = 0
    for x, y in split.batches(batch_size):
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    return correct / max(len(split), 1)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: Split, batches: int = 20, batch_size: int = 64, seed: int = 0) -> int:
    """Adaptive BN: re-estimate every BatchNorm's running statistics on `batches` training batches, weights
    untouched, so a pruned network is scored with the statistics of its own activations. Returns the images seen."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return 0
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen
        m.train()
    seen, device = 0, model_device(model)
    for x, _ in split.subset(batches * batch_size, seed).batches(batch_size):
        model(x.to(device))
        seen += len(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return seen


def batchnorm_scales(model: nn.Module) -> torch.Tensor:
    """|γ| of every affine BatchNorm layer of `model`, concatenated in module order (a 1-D CPU tensor): the
    distribution Network Slimming's sparsity training pushes towards zero and its threshold cuts."""
    scales = [m.weight.detach().abs().flatten().cpu() for m in _affine_batchnorms(model)]
    return torch.cat(scales) if scales else torch.empty(0)


def _affine_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


@torch.no_grad()
def add_bn_l1_subgradient(model: nn.Module, weight: float) -> None:
    """Add λ·sign(γ), the subgradient of λ·Σ|γ|, to the gradient of every BatchNorm scale (after backward)."""
    for m in _affine_batchnorms(model):
        if m.weight.grad is not None:
            m.weight.grad.add_(torch.sign(m.weight), alpha=weight)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss, scaled by T² so its gradient matches the hard loss."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="batchmean"
    ) * (t * t)


class FineTune:
    """A fine-tune of `model` planned for `settings.epochs`: SGD with Nesterov momentum on a one-cycle schedule over
    the whole plan, optionally distilled from `teacher`. It runs in pieces — `run_to(epochs)` trains up to that
    point of the plan — and `state_dict()` holds everything it depends on (weights, optimizer, schedule, the
    epoch's image order and position, random states), so a fine-tune cut anywhere and continued, in this process
    or another, takes exactly the steps one run straight through would."""

    def __init__(
        self, model: nn.Module, data: DataBundle, settings: TrainSettings, seed: int = 0,
        teacher: nn.Module | None = None,
    ) -> None:
        self.model, self.data, self.settings, self.seed, self.teacher = model, data, settings, seed, teacher
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.train = data.train.subset(settings.max_train_samples, seed)
        self.steps_per_epoch = math.ceil(len(self.train) / settings.batch_size)
        self.total_steps = self.steps_at(settings.epochs)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay,
            nesterov=settings.momentum > 0,
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(  # momentum swings ±0.05 against the learning rate
            self.optimizer, max_lr=settings.lr, total_steps=self.total_steps, pct_start=0.15,
            cycle_momentum=settings.momentum > 0, base_momentum=max(0.0, round(settings.momentum - 0.05, 6)),
            max_momentum=min(0.99, round(settings.momentum + 0.05, 6)),
        )
        self.step, self.loss = 0, float("nan")
        self.order: torch.Tensor | None = None
        self.position = 0  # batches of the current epoch's order already taken
        self.seconds = 0.0

    def steps_at(self, epochs: float) -> int:
        """Optimizer steps in `epochs` of training (at least one)."""
        return max(1, int(round(epochs * self.steps_per_epoch)))

    def run_to(self, epochs: float) -> float:
        """Train on `settings.device` until `epochs` of the plan are done (the model is back on the CPU after);
        returns the last loss. Raises TrainingDiverged on NaN."""
        target = min(self.total_steps, self.steps_at(epochs))
        start = time.perf_counter()
        with placed(self.settings.device, self.model, self.teacher):
            _optimizer_to(self.optimizer, self.settings.device)
            self._steps(target)
        self.seconds += time.perf_counter() - start
        return self.loss

    def _steps(self, target: int) -> None:
        s, device = self.settings, self.settings.device
        if self.teacher is not None:
            self.teacher.eval()
        self.model.train()
        while self.step < target:
            if self.order is None:
                self.order, self.position = torch.randperm(len(self.train), generator=self.generator), 0
            for x, y in self.train.batches_in(self.order, s.batch_size, self.generator, self.data.augment,
                                              self.position):
                self.position += 1
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = self.model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=s.label_smoothing)
                if self.teacher is not None and s.kd_alpha > 0:
                    with torch.no_grad():
                        teacher_logits = self.teacher(x)
                    kd = distillation_loss(logits, teacher_logits, s.kd_temperature)
                    loss = (1 - s.kd_alpha) * loss + s.kd_alpha * kd
                self.loss = float(loss.detach())
                if not math.isfinite(self.loss):
                    raise TrainingDiverged(f"loss became {self.loss} at step {self.step} of {self.total_steps}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if s.bn_l1 > 0:
                    add_bn_l1_subgradient(self.model, s.bn_l1)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                if self.step >= target:
                    break
            else:
                self.order = None

    def accuracy(self, split: str = "val") -> float:
        """Top-1 accuracy on `split` (its first `settings.max_eval_samples` images of the seeded shuffle)."""
        return evaluate(self.model, getattr(self.data, split).subset(self.settings.max_eval_samples, self.seed))

    def result(self, split: str = "val") -> TrainResult:
        """What the fine-tune reached so far, scored on `split`."""
        return TrainResult(accuracy=self.accuracy(split), final_loss=self.loss, steps=self.step, seconds=self.seconds)

    def state_dict(self) -> dict[str, Any]:
        """Everything a continuation needs, on the CPU."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "order": self.order, "position": self.position, "step": self.step, "loss": self.loss,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of a fine-tune with the same plan."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.order, self.position = state["order"], state["position"]
        self.step, self.loss, self.seconds = state["step"], state["loss"], state["seconds"]


def _optimizer_to(optimizer: torch.optim.Optimizer, device: str) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device)


def _to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_cpu(v) for v in state]
    return state


def train_model(
    model: nn.Module,
    data: DataBundle,
    settings: TrainSettings,
    seed: int = 0,
    teacher: nn.Module | None = None,
    eval_split: str = "val",
) -> TrainResult:
    """Fine-tune `model` in place on `settings.device` for `settings.epochs` and return its accuracy on
    `eval_split`; the model is back on the CPU afterwards. Raises TrainingDiverged on NaN."""
    tune = FineTune(model, data, settings, seed, teacher)
    tune.run_to(settings.epochs)
    return tune.result(eval_split)
