"""Fast CIFAR training for the real-scale benchmark: the whole training split held on the device as uint8,
a random flip and 4-pixel crop drawn there for every image each epoch (one gather), bf16 autocast on a GPU,
channels_last, SGD with Nesterov momentum, label smoothing and a one-cycle schedule (linear rise over the
first `warmup` share of the steps, linear fall to zero), optionally distilled from a teacher.

The study's own fine-tunes (evaluators.train) copy every batch from the CPU in fp32; that is fine for a
fraction of an epoch, but training ResNet-56 to 93% in a couple of minutes needs the data to stay on the
GPU and the matrix units to run bf16. A run can be given a time budget: after its second epoch it
measures the epoch time and, if the planned epochs would not fit, shortens the schedule (the learning
rate then follows the shorter cycle from where it is) and records both numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluators.data import Split
from evaluators.train import TrainingDiverged, distillation_loss

PAD = 4


@dataclass
class Recipe:
    """How a network is trained: epochs (fractions allowed), batch, peak learning rate and regularization."""

    epochs: float
    batch_size: int = 512
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup: float = 0.15
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0


def one_cycle(progress: float, peak: float, warmup: float) -> float:
    """Learning rate at `progress` (0..1) of a run: linear from 0 to `peak` over `warmup`, then linear to 0."""
    if progress < warmup:
        return peak * progress / warmup
    return peak * max(0.0, 1.0 - progress) / max(1e-9, 1.0 - warmup)


class DeviceSplit:
    """A split's uint8 images and labels on `device`, with its normalization, ready to batch there."""

    def __init__(self, split: Split, device: str) -> None:
        self.device = device
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        self.mean = split.mean.to(device).view(1, -1, 1, 1)
        self.std = split.std.to(device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def augmented(self, generator: torch.Generator) -> torch.Tensor:
        """Every image flipped with probability 1/2 and cropped at a random offset of its 4-pixel zero padding."""
        n, _, h, w = self.x.shape
        dev = self.device
        padded = F.pad(self.x, (PAD, PAD, PAD, PAD))
        dy = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator, device=dev)
        dx = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator, device=dev)
        flip = torch.rand(n, 1, generator=generator, device=dev) < 0.5
        cols = torch.arange(w, device=dev)
        cols = dx + torch.where(flip, w - 1 - cols, cols)
        rows = dy + torch.arange(h, device=dev)
        return padded[
            torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(self.x.shape[1], device=dev).view(1, -1, 1, 1),
            rows.view(n, 1, h, 1), cols.view(n, 1, 1, w),
        ]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to standardized floats, channels_last."""
        x = (x.float().div_(255.0) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


def _autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


@torch.no_grad()
def accuracy(model: nn.Module, split: Split | DeviceSplit, device: str, batch_size: int = 1000) -> float:
    """Top-1 accuracy in eval mode and fp32 (no autocast), on `device`; the model comes back to the CPU."""
    data = split if isinstance(split, DeviceSplit) else DeviceSplit(split, device)
    model.to(device).eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for i in range(0, len(data), batch_size):
        logits = model(data.normalize(data.x[i:i + batch_size]))
        correct += (logits.argmax(1) == data.y[i:i + batch_size]).sum()
    model.to("cpu")
    return int(correct) / max(1, len(data))


def fit(
    model: nn.Module, train: Split | DeviceSplit, recipe: Recipe, device: str, *, teacher: nn.Module | None = None,
    seed: int = 0, budget_s: float | None = None, log: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Train `model` in place on `device` (back on the CPU afterwards) and report what ran: epochs planned and
    run, steps, seconds, seconds per epoch and the last epoch's mean loss. Raises TrainingDiverged on NaN."""
    data = train if isinstance(train, DeviceSplit) else DeviceSplit(train, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / recipe.batch_size)
    planned = recipe.epochs
    total = max(1, round(planned * steps_per_epoch))
    model.to(device).to(memory_format=torch.channels_last).train()
    if teacher is not None:
        teacher.to(device).to(memory_format=torch.channels_last).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=recipe.momentum, nesterov=recipe.momentum > 0,
                          weight_decay=recipe.weight_decay)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    step, epoch, epoch_times, last_loss = 0, 0, [], float("nan")
    try:
        while step < total:
            t_epoch = time.perf_counter()
            order = torch.randperm(len(data), generator=generator, device=device)
            images = data.augmented(generator)
            loss_sum = torch.zeros((), device=device)
            batches = 0
            for i in range(0, len(data), recipe.batch_size):
                if step >= total:
                    break
                for group in opt.param_groups:
                    group["lr"] = one_cycle(step / total, recipe.lr, recipe.warmup)
                idx = order[i:i + recipe.batch_size]
                x, y = data.normalize(images[idx]), data.y[idx]
                with _autocast(device):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                    if teacher is not None and recipe.kd_alpha > 0:
                        with torch.no_grad():
                            soft = teacher(x)
                        kd = distillation_loss(logits.float(), soft.float(), recipe.kd_temperature)
                        loss = (1 - recipe.kd_alpha) * loss + recipe.kd_alpha * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                batches += 1
                step += 1
            last_loss = float(loss_sum) / max(1, batches)  # one sync per epoch
            if not math.isfinite(last_loss):
                raise TrainingDiverged(f"loss became {last_loss} in epoch {epoch + 1}")
            epoch += 1
            epoch_times.append(time.perf_counter() - t_epoch)
            if log:
                log(f"  epoch {epoch}: loss {last_loss:.4f}, {epoch_times[-1]:.1f} s")
            if budget_s is not None and epoch == 2 and step < total:
                fits = int((budget_s - (time.perf_counter() - start)) / epoch_times[-1] * steps_per_epoch) + step
                if fits < total:
                    total = max(step + 1, fits)
                    if log:
                        log(f"  budget {budget_s:.0f} s: schedule cut to {total / steps_per_epoch:.1f} epochs")
    finally:
        torch.backends.cudnn.benchmark = benchmark
        model.to("cpu").to(memory_format=torch.contiguous_format)
        if teacher is not None:
            teacher.to("cpu").to(memory_format=torch.contiguous_format)
    seconds = time.perf_counter() - start
    return {
        "recipe": asdict(recipe), "epochs_planned": planned, "epochs_run": round(step / steps_per_epoch, 3),
        "steps": step, "seconds": round(seconds, 2), "epoch_seconds": [round(t, 2) for t in epoch_times],
        "final_loss": last_loss, "images": len(data), "device": device,
    }
