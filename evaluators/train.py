"""The one training loop: quick fine-tunes, multi-fidelity rungs, sparsity training, base training and the long
fine-tune of a picked trial all run through `FineTune` — SGD on a one-cycle or a cosine schedule, optional
distillation and BatchNorm sparsity, then accuracy.

The training split stays on the training device (see evaluators.device_data); on a CUDA GPU the steps run under
bf16 autocast with the networks and batches in channels_last, so an epoch of ResNet-56 on CIFAR-10 takes seconds.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluators.device_data import on_device
from evaluators.splits import DataBundle, Split, subset_indices

SCHEDULES = ("one-cycle", "cosine")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the candidate fails its trial with this reason."""


@dataclass
class TrainSettings:
    """How long and how hard a candidate is fine-tuned. `schedule`: `one-cycle` (the learning rate rises to `lr`
    over the `warmup` share of the steps and anneals, momentum swinging against it; quick fine-tunes) or `cosine`
    (a linear rise to `lr` over the `warmup` share, then half a cosine down to 0, momentum fixed; long fine-tunes). `bn_l1`: weight λ of the L1 penalty λ·Σ|γ| on every BatchNorm scale (Network
    Slimming's sparsity training); 0 leaves training as it is. `bf16` (autocast) and `channels_last`: None turns
    each on where `device` is a CUDA GPU and off on the CPU (where a run continued is bit-identical to a straight
    one)."""

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
    warmup: float = 0.15
    schedule: str = "one-cycle"
    bf16: bool | None = None
    channels_last: bool | None = None

    @property
    def uses_bf16(self) -> bool:
        """Whether the steps run under bf16 autocast (`bf16`, or by default where the device is a CUDA GPU)."""
        return self._on_cuda() if self.bf16 is None else self.bf16

    @property
    def uses_channels_last(self) -> bool:
        """Whether networks and batches are channels_last (`channels_last`, or by default on a CUDA GPU)."""
        return self._on_cuda() if self.channels_last is None else self.channels_last

    def _on_cuda(self) -> bool:
        """Whether `device` is a CUDA GPU."""
        return torch.device(self.device).type == "cuda"


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


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `split`, in eval mode and fp32, on the device the model is on (the split held
    there, one synchronization at the end)."""
    model.eval()
    data = on_device(split, model_device(model))
    correct = torch.zeros((), dtype=torch.int64, device=data.y.device)
    for start in range(0, len(data), batch_size):
        x = data.normalize(data.x[start : start + batch_size])
        correct += (model(x).argmax(1) == data.y[start : start + batch_size]).sum()
    return int(correct) / max(len(data), 1)


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
    data = on_device(split, model_device(model))
    rows = subset_indices(len(data), batches * batch_size, seed)
    rows = (torch.arange(len(data)) if rows is None else rows).to(data.y.device)
    for start in range(0, len(rows), batch_size):
        model(data.batch(rows[start : start + batch_size])[0])
    seen = len(rows)
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


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """The learning rate rising linearly to its base over `warmup_steps`, then falling along half a cosine to 0 at
    `total_steps` (and staying there). Closed form in the step, so a schedule rebuilt at any step (a replan, a
    continued fine-tune) is exactly where a straight one would be; its plan is in its state_dict."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 last_epoch: int = -1) -> None:
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The share of the base learning rate after `step` steps."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))

    def get_lr(self) -> list[float]:
        """Each group's learning rate at the scheduler's step."""
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


Schedule = torch.optim.lr_scheduler.OneCycleLR | WarmupCosine


class FineTune:
    """A fine-tune of `model` planned for `settings.epochs`: SGD with Nesterov momentum on a one-cycle or cosine
    schedule over the whole plan, optionally distilled from `teacher`. It runs in pieces — `run_to(epochs)` trains up to that
    point of the plan — and `state_dict()` holds everything it depends on (weights, optimizer, schedule, the
    epoch's image order, augmentation seed and position, random states), so a fine-tune cut anywhere and continued,
    in this process or another, takes exactly the steps one run straight through would (bit for bit on the CPU)."""

    def __init__(
        self, model: nn.Module, data: DataBundle, settings: TrainSettings, seed: int = 0,
        teacher: nn.Module | None = None,
    ) -> None:
        self.model, self.data, self.settings, self.seed, self.teacher = model, data, settings, seed, teacher
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.rows = subset_indices(len(data.train), settings.max_train_samples, seed)  # None: every image
        self.images = len(data.train) if self.rows is None else len(self.rows)
        self.steps_per_epoch = math.ceil(self.images / settings.batch_size)
        self.total_steps = self.steps_at(settings.epochs)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay,
            nesterov=settings.momentum > 0,
        )
        if settings.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {settings.schedule!r}")
        self.scheduler = self._schedule(self.total_steps, -1)
        self.step, self.loss = 0, float("nan")
        self.order: torch.Tensor | None = None
        self.augment_seed = 0  # drawn with each epoch's order; a batch's flips and crops are seeded by it
        self.position = 0  # batches of the current epoch's order already taken
        self.seconds = 0.0
        self._epoch_rows: torch.Tensor | None = None  # the epoch's order as rows of data.train, on the device
        self._last_loss: torch.Tensor | None = None

    def _schedule(self, total_steps: int, last_step: int) -> Schedule:
        """The schedule over `total_steps`, positioned after `last_step` (-1: at the start)."""
        s = self.settings
        if s.schedule == "cosine":
            return WarmupCosine(self.optimizer, total_steps, int(round(float(s.warmup) * total_steps)), last_step)
        return torch.optim.lr_scheduler.OneCycleLR(  # momentum swings ±0.05 against the learning rate
            self.optimizer, max_lr=s.lr, total_steps=total_steps, pct_start=float(s.warmup),
            cycle_momentum=s.momentum > 0, base_momentum=max(0.0, round(s.momentum - 0.05, 6)),
            max_momentum=min(0.99, round(s.momentum + 0.05, 6)), last_epoch=last_step,
        )

    def steps_at(self, epochs: float) -> int:
        """Optimizer steps in `epochs` of training (at least one)."""
        return max(1, int(round(epochs * self.steps_per_epoch)))

    def replan(self, epochs: float) -> None:
        """Change the plan to `epochs` (at least one step more than taken): the schedule goes on from the current
        step along the one of the new length — a run cut short by a time budget still anneals."""
        self.total_steps = max(self.step + 1, self.steps_at(epochs))
        self.scheduler = self._schedule(self.total_steps, self.step - 1)

    def run_to(self, epochs: float) -> float:
        """Train on `settings.device` until `epochs` of the plan are done (the model is back on the CPU after);
        returns the last loss. Raises TrainingDiverged on NaN."""
        target = min(self.total_steps, self.steps_at(epochs))
        start = time.perf_counter()
        with self._on_device():
            self._steps(target)
        self.seconds += time.perf_counter() - start
        return self.loss

    @contextmanager
    def _on_device(self) -> Iterator[None]:
        """The networks and optimizer on the device (channels_last there if asked for), cuDNN autotuning on."""
        s = self.settings
        nets = [m for m in (self.model, self.teacher) if m is not None]
        benchmark = torch.backends.cudnn.benchmark
        with placed(s.device, *nets):
            _optimizer_to(self.optimizer, s.device)
            if s.uses_channels_last:
                for m in nets:
                    m.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = torch.device(s.device).type == "cuda" or benchmark
            try:
                yield
            finally:
                torch.backends.cudnn.benchmark = benchmark
                if s.uses_channels_last:
                    for m in nets:
                        m.to(memory_format=torch.contiguous_format)

    def _steps(self, target: int) -> None:
        """Take steps until `target`, an epoch's order (and augmentation seed) drawn whenever one is used up."""
        s, device = self.settings, torch.device(self.settings.device)
        data = on_device(self.data.train, device)
        augment = torch.Generator(device=device) if self.data.augment else None
        if self.teacher is not None:
            self.teacher.eval()
        self.model.train()
        while self.step < target:
            if self.order is None:
                self.order, self.position = torch.randperm(self.images, generator=self.generator), 0
                self.augment_seed = int(torch.randint(2**62, (1,), generator=self.generator))
                self._epoch_rows = None
            if self._epoch_rows is None:
                rows = self.order if self.rows is None else self.rows[self.order]
                self._epoch_rows = rows.to(device)
            for start in range(self.position * s.batch_size, self.images, s.batch_size):
                if augment is not None:
                    augment.manual_seed(self.augment_seed + self.position)
                x, y = data.batch(self._epoch_rows[start : start + s.batch_size], augment)
                self.position += 1
                self._step(x, y)
                if self.step >= target:
                    break
            else:
                self.order = None
                self._check_loss()
        self._check_loss()

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on a normalized batch: forward (bf16 autocast if set), loss, backward, update."""
        s = self.settings
        if s.uses_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(s.device).type, dtype=torch.bfloat16, enabled=s.uses_bf16):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=s.label_smoothing)
            if self.teacher is not None and s.kd_alpha > 0:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                kd = distillation_loss(logits.float(), teacher_logits.float(), s.kd_temperature)
                loss = (1 - s.kd_alpha) * loss + s.kd_alpha * kd
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.bn_l1 > 0:
            add_bn_l1_subgradient(self.model, s.bn_l1)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self._last_loss = loss.detach()

    def _check_loss(self) -> None:
        """Read the last loss back (the one synchronization with the device, once an epoch and once a run);
        raise TrainingDiverged where it is NaN or infinite — a diverged loss stays so."""
        if self._last_loss is None:
            return
        self.loss, self._last_loss = float(self._last_loss), None
        if not math.isfinite(self.loss):
            raise TrainingDiverged(f"loss became {self.loss} by step {self.step} of {self.total_steps}")

    def accuracy(self, split: str = "val") -> float:
        """Top-1 accuracy on `split` (its first `settings.max_eval_samples` images of one fixed shuffle, the same for
        every fine-tune), scored on `settings.device`."""
        with placed(self.settings.device, self.model):
            return evaluate(self.model, getattr(self.data, split).subset(self.settings.max_eval_samples))

    def result(self, split: str = "val") -> TrainResult:
        """What the fine-tune reached so far, scored on `split`."""
        return TrainResult(accuracy=self.accuracy(split), final_loss=self.loss, steps=self.step, seconds=self.seconds)

    def state_dict(self) -> dict[str, Any]:
        """Everything a continuation needs, on the CPU."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "order": self.order, "augment_seed": self.augment_seed, "position": self.position, "step": self.step,
            "loss": self.loss, "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of a fine-tune with the same settings (its plan, replanned or not, with it)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.total_steps = self.scheduler.total_steps
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.order, self.augment_seed, self.position = state["order"], state["augment_seed"], state["position"]
        self.step, self.loss, self.seconds = state["step"], state["loss"], state["seconds"]
        self._epoch_rows, self._last_loss = None, None


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
