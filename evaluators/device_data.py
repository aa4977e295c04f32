"""A split held on the device that trains on it, and the batches drawn from it there.

A fine-tune's images stay on its device as decoded (uint8 where the data set is uint8), so a batch is a gather
on that device — with a random 4-pixel padded crop and flip drawn per image when the data set augments — and one
multiply-add that normalizes it; nothing is copied from the CPU per batch. A split is copied to a GPU once per
process and kept there while its CPU tensor lives, so the fine-tunes of a study share one copy.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from evaluators.splits import Split

PAD = 4
_COPIES: weakref.WeakKeyDictionary[torch.Tensor, dict[str, "DeviceSplit"]] = weakref.WeakKeyDictionary()


class DeviceSplit:
    """A split's raw images and labels on `device`, with its per-channel standardization folded into a scale and
    a shift of the raw values."""

    def __init__(self, split: Split, device: str | torch.device) -> None:
        self.source = weakref.ref(split)  # not the split itself: the cache's value must not keep its key alive
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        std = split.std * 255.0 if split.x.dtype == torch.uint8 else split.std
        self.scale = (1.0 / std).to(device).view(1, -1, 1, 1)
        self.shift = (-split.mean / split.std).to(device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw images (any dtype) to standardized float32."""
        return torch.addcmul(self.shift, x.to(torch.float32), self.scale)

    def batch(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `rows` (indices on this device), normalized — flipped and cropped per image when a `generator`
        (on this device) is given — and their labels."""
        x = self.x[rows] if generator is None else flip_and_crop(self.x, rows, generator)
        return self.normalize(x), self.y[rows]


def on_device(split: Split, device: str | torch.device) -> DeviceSplit:
    """`split` on `device`: on the CPU its own tensors; on another device the copy made the first time it was asked
    for there (kept while `split.x` lives)."""
    device = torch.device(device)
    if device.type == "cpu":
        return DeviceSplit(split, device)
    if device.index is None:  # `cuda` and `cuda:0` share a copy
        device = torch.device(device.type, torch.get_device_module(device.type).current_device())
    copies = _COPIES.setdefault(split.x, {})
    cached = copies.get(str(device))
    if cached is None or cached.source() is not split:
        cached = copies[str(device)] = DeviceSplit(split, device)
    return cached


def flip_and_crop(images: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images `rows` of `images` (N, C, H, W), each cropped at a random offset of its zero padding of `PAD` pixels
    and flipped left-right with probability 1/2, drawn per image on the images' device; same dtype."""
    n, (h, w), dev = len(rows), images.shape[-2:], images.device
    offsets = torch.randint(0, 2 * PAD + 1, (2, n), generator=generator, device=dev)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    windows = F.pad(images[rows], (PAD, PAD, PAD, PAD)).unfold(2, h, 1).unfold(3, w, 1)  # (n, C, 9, 9, H, W) view
    crops = windows[torch.arange(n, device=dev), :, offsets[0], offsets[1]]
    return torch.where(flip.view(n, 1, 1, 1), crops.flip(3), crops)
