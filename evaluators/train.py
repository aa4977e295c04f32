"""Quick fine-tune: a few epochs of SGD with a cosine schedule, optional distillation and BatchNorm sparsity,
then accuracy."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

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


def train_model(
    model: nn.Module,
    data: DataBundle,
    settings: TrainSettings,
    seed: int = 0,
    teacher: nn.Module | None = None,
    eval_split: str = "val",
) -> TrainResult:
    """Fine-tune `model` in place on `settings.device` and return its accuracy on `eval_split`; the model is
    back on the CPU afterwards. Raises TrainingDiverged on NaN."""
    with placed(settings.device, model, teacher):
        return _train(model, data, settings, seed, teacher, eval_split)


def _train(
    model: nn.Module, data: DataBundle, settings: TrainSettings, seed: int, teacher: nn.Module | None, eval_split: str
) -> TrainResult:
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train = data.train.subset(settings.max_train_samples, seed)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total_steps = max(1, int(round(settings.epochs * steps_per_epoch)))
    opt = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay,
        nesterov=settings.momentum > 0,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(  # momentum swings ±0.05 against the learning rate
        opt, max_lr=settings.lr, total_steps=total_steps, pct_start=0.15, cycle_momentum=settings.momentum > 0,
        base_momentum=max(0.0, round(settings.momentum - 0.05, 6)),
        max_momentum=min(0.99, round(settings.momentum + 0.05, 6)),
    )
    if teacher is not None:
        teacher.eval()
    step, loss_value = 0, float("nan")
    model.train()
    while step < total_steps:
        for x, y in train.batches(settings.batch_size, shuffle=True, generator=generator, augment=data.augment):
            x, y = x.to(settings.device, non_blocking=True), y.to(settings.device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
            if teacher is not None and settings.kd_alpha > 0:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                kd = distillation_loss(logits, teacher_logits, settings.kd_temperature)
                loss = (1 - settings.kd_alpha) * loss + settings.kd_alpha * kd
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss became {loss_value} at step {step} of {total_steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.bn_l1 > 0:
                add_bn_l1_subgradient(model, settings.bn_l1)
            opt.step()
            sched.step()
            step += 1
            if step >= total_steps:
                break
    split = getattr(data, eval_split).subset(settings.max_eval_samples, seed)
    accuracy = evaluate(model, split)
    return TrainResult(accuracy=accuracy, final_loss=loss_value, steps=step, seconds=time.perf_counter() - start)
