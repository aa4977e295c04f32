"""Datasets held in memory as tensors, split into train / val / test, with no download ever.

The search scores candidates on `val` (carved from the training images with a fixed seed);
`test` is kept for the final report at export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from registry import Registry


class DataError(ValueError):
    """A data source that cannot be read: the message names the path or name and what was expected."""


@dataclass
class Split:
    """Images (N, C, H, W) as float32 or uint8 (as decoded, never converted whole), and integer labels."""

    x: torch.Tensor
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None, seed: int = 0) -> "Split":
        """The first `n` images of a fixed shuffle (the whole split when `n` is None or larger)."""
        idx = subset_indices(len(self), n, seed)
        return self if idx is None else Split(self.x[idx], self.y[idx], self.mean, self.std)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Scale a raw batch to float and standardize it per channel."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalized (x, y) batches in order, on the CPU (fine-tunes batch on their device: evaluators.device_data)."""
        for start in range(0, len(self), batch_size):
            yield self.normalize(self.x[start : start + batch_size]), self.y[start : start + batch_size]


def subset_indices(size: int, n: int | None, seed: int = 0) -> torch.Tensor | None:
    """Indices of the first `n` of `size` images in a fixed shuffle by `seed`; None (every image) when `n` is None or
    not smaller than `size`."""
    if n is None or n >= size:
        return None
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]


@dataclass
class DataBundle:
    """A dataset ready for quick fine-tunes: splits, class count and image geometry."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    augment: bool = False

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


Loader = Callable[..., DataBundle]
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator that registers a loader `fn(root, image_size, val_fraction, seed) -> DataBundle`."""
    return DATASETS.register(name)


def load_data(
    name: str, root: str | Path | None = None, image_size: int | None = None, val_fraction: float = 0.2, seed: int = 0
) -> DataBundle:
    """Load a registered dataset by name (`registry.UnknownName` for a name that is not); a bad path raises
    `DataError` saying what to fix."""
    return DATASETS[name](root=root, image_size=image_size, val_fraction=val_fraction, seed=seed)


def split_off(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified index split: (kept, held out) with `fraction` of each class held out."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in torch.unique(y).tolist():
        idx = np.flatnonzero(y.numpy() == label)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def channel_stats(x: torch.Tensor, max_images: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of raw images, on the [0, 1] scale for uint8 input; estimated on about
    `max_images` evenly spaced images, so large sets are not copied to float whole."""
    x = x[:: max(1, len(x) // max_images)]
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3)).clamp_min(1e-6)


def bundle_from_arrays(
    name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    val_fraction: float,
    seed: int,
    augment: bool = False,
) -> DataBundle:
    """Carve a stratified validation split off the training images and package the three splits."""
    classes = torch.unique(train_y).numel()
    if classes < 2:
        raise DataError(f"{name}: the training images hold {classes} class; a classifier needs at least two")
    keep, held = split_off(train_x, train_y, val_fraction, seed)
    if len(held) == 0 or len(keep) == 0:
        raise DataError(
            f"{name}: data.val_fraction {val_fraction:g} of {len(train_y)} training images in {classes} classes leaves "
            f"{len(keep)} to train on and {len(held)} to score candidates on; both need images (more images per "
            "class, or another data.val_fraction)"
        )
    mean, std = channel_stats(train_x[keep])
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return DataBundle(
        name=name,
        train=Split(train_x[keep], train_y[keep], mean, std),
        val=Split(train_x[held], train_y[held], mean, std),
        test=Split(test_x, test_y, mean, std),
        num_classes=num_classes,
        in_channels=train_x.shape[1],
        image_size=train_x.shape[-1],
        augment=augment,
    )


def resize(x: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Bilinear resize of a float image batch to `image_size` (unchanged when None or equal)."""
    if image_size is None or image_size == x.shape[-1]:
        return x
    return F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)


@register_dataset("digits")
def load_digits(root: str | Path | None, image_size: int | None, val_fraction: float, seed: int) -> DataBundle:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes); 20% held out as test."""
    from sklearn.datasets import load_digits as sk_digits

    if root is not None:
        raise DataError("dataset 'digits' ships with scikit-learn and takes no data.root; remove it")
    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    x = resize(x, image_size)
    train_idx, test_idx = split_off(x, y, 0.2, seed=1234)
    return bundle_from_arrays(
        "digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], val_fraction=val_fraction, seed=seed
    )
