"""Datasets read from a local folder (nothing is downloaded): CIFAR-10, any ImageFolder tree, Fashion-MNIST.

Images are held in memory as uint8 tensors. Decoding a tree of image files is slow (a minute for
CIFAR-10's 60,000 JPEGs on two cores), so the decoded arrays are cached as `.npz` files in
`$SLIMSEARCH_CACHE` (default `~/.cache/slimsearch`), keyed by the folder's absolute path, its number of
image files, their newest modification time and the requested image size.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluators.splits import DataBundle, DataError, bundle_from_arrays, register_dataset, resize

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
IMAGE_FOLDER_LAYOUT = "root/train/<class>/*.jpg|png and root/test/<class>/*.jpg|png"
CIFAR_LAYOUTS = (
    f"either the ImageFolder layout ({IMAGE_FOLDER_LAYOUT}) or the CIFAR-10 python layout "
    "(root/cifar-10-batches-py/data_batch_1..5 and test_batch, or root pointing at that folder)"
)
IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_LAYOUT = (
    f"the idx files {', '.join(IDX_NAMES.values())} (optionally .gz) in root/FashionMNIST/raw/, root/raw/ or root/"
)


@dataclass
class Arrays:
    """Train and test images (N, C, H, W) uint8 with int64 labels, and the class names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]

    def resized(self, image_size: int | None) -> "Arrays":
        """The same arrays with images resized to `image_size` (unchanged when None or already that size)."""
        return Arrays(
            resize_uint8(self.train_x, image_size), self.train_y, resize_uint8(self.test_x, image_size),
            self.test_y, self.classes,
        )

    def bundle(self, name: str, val_fraction: float, seed: int, augment: bool) -> DataBundle:
        return bundle_from_arrays(
            name, self.train_x, self.train_y, self.test_x, self.test_y, val_fraction, seed, augment=augment
        )


def cache_dir() -> Path:
    """Where decoded image folders are cached: `$SLIMSEARCH_CACHE`, else `~/.cache/slimsearch`."""
    return Path(os.environ.get("SLIMSEARCH_CACHE") or Path.home() / ".cache" / "slimsearch").expanduser()


def resize_uint8(x: torch.Tensor, image_size: int | None, chunk: int = 4096) -> torch.Tensor:
    """Bilinear resize of uint8 images to `image_size`, kept as uint8, a chunk at a time to bound memory."""
    if image_size is None or x.shape[-2:] == (image_size, image_size):
        return x
    parts = [resize(x[i : i + chunk].float(), image_size).round().clamp(0, 255) for i in range(0, len(x), chunk)]
    return torch.cat(parts).to(torch.uint8)


def local_root(root: str | Path | None, dataset: str, layout: str) -> Path:
    """The dataset folder as a Path; a missing `data.root` or folder raises DataError naming the layout."""
    if root is None:
        raise DataError(f"dataset {dataset!r} is read from a local folder: set data.root to a folder with {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root {str(path)!r}: no such folder; dataset {dataset!r} expects {layout}")
    return path


@dataclass
class FolderIndex:
    """An ImageFolder tree listed: class names (sorted train sub-folders), each split's (file, label) pairs,
    and the newest modification time of any image (for the cache key)."""

    classes: list[str]
    files: dict[str, list[tuple[str, int]]]
    newest_mtime_ns: int


def list_image_folder(root: Path) -> FolderIndex:
    """List `root/{train,test}/<class>/*`; DataError on a layout that does not match."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root}: no {split}/ folder; expected {IMAGE_FOLDER_LAYOUT}")
    classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    if not classes:
        raise DataError(f"{root / 'train'}: no class folders; expected {IMAGE_FOLDER_LAYOUT}")
    index = {name: i for i, name in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {}
    newest = 0
    for split in ("train", "test"):
        folders = sorted(e.name for e in os.scandir(root / split) if e.is_dir())
        unknown = [name for name in folders if name not in index]
        if unknown:
            raise DataError(f"{root / split}: class folders {unknown} are not in {root / 'train'} ({classes})")
        files[split] = []
        for name in folders:
            entries = sorted(
                (e for e in os.scandir(root / split / name) if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS),
                key=lambda e: e.name,
            )
            files[split] += [(e.path, index[name]) for e in entries]
            newest = max([newest, *(e.stat().st_mtime_ns for e in entries)])
        if not files[split]:
            raise DataError(f"{root / split}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    holding = sorted({classes[label] for _, label in files["train"]})
    if len(holding) < 2:
        raise DataError(f"{root / 'train'}: only {holding} holds images; a classifier needs at least two classes, "
                        f"one folder of images each ({IMAGE_FOLDER_LAYOUT})")
    return FolderIndex(classes, files, newest)


def _decode(path: str, image_size: int | None, native: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            elif native is not None and img.size != native:
                raise DataError(
                    f"{path}: is {img.size[0]}×{img.size[1]} but other images are {native[0]}×{native[1]}; "
                    "set data.image_size to resize every image to one size"
                )
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def decode_images(files: list[tuple[str, int]], image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode (file, label) pairs to (N, H, W, 3) uint8 and (N,) labels, all resized to one square size."""
    first = _decode(files[0][0], image_size, None)
    native = (first.shape[1], first.shape[0])
    if image_size is None and native[0] != native[1]:
        raise DataError(f"{files[0][0]}: images are {native[0]}×{native[1]}, not square; set data.image_size")
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first
    for i, (path, _) in enumerate(files[1:], start=1):
        images[i] = _decode(path, image_size, native)
    return images, np.array([label for _, label in files], dtype=np.int64)


def _cache_key(root: Path, folder: FolderIndex, image_size: int | None) -> str:
    count = sum(len(f) for f in folder.files.values())
    text = f"{root.resolve()}|{count}|{folder.newest_mtime_ns}|{image_size}|v1"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _is_grey(images: np.ndarray) -> bool:
    """Whether every (N, H, W, 3) image has equal red, green and blue."""
    return bool(np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 1], images[..., 2]))


def _to_chw(images: np.ndarray, grey: bool) -> torch.Tensor:
    """(N, H, W, 3) uint8 to (N, C, H, W), with one channel for grey images."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    return (x[:, :1] if grey else x).contiguous()


def read_image_folder(root: Path, image_size: int | None) -> Arrays:
    """Decode `root/{train,test}/<class>/*` (or load its cached decode) into uint8 arrays."""
    folder = list_image_folder(root)
    files = folder.files
    cache = cache_dir() / f"imagefolder-{_cache_key(root, folder, image_size)}.npz"
    try:
        with np.load(cache) as z:
            arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        n = sum(len(f) for f in files.values())
        log.warning("decoding %d images from %s (cached afterwards in %s)", n, root, cache.parent)
        train_x, train_y = decode_images(files["train"], image_size)
        test_x, test_y = decode_images(files["test"], image_size)
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(f"{root}: train images are {train_x.shape[1:3]} but test images {test_x.shape[1:3]}")
        arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
        _save_cache(cache, arrays)
    grey = _is_grey(arrays["train_x"]) and _is_grey(arrays["test_x"])
    return Arrays(
        _to_chw(arrays["train_x"], grey), torch.from_numpy(arrays["train_y"]), _to_chw(arrays["test_x"], grey),
        torch.from_numpy(arrays["test_y"]), folder.classes,
    )


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the cache atomically (other processes may read it meanwhile); an unwritable cache is only a warning."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache decoded images in %s: %s", path.parent, exc)
        tmp.unlink(missing_ok=True)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a data file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def find_cifar_pickles(root: Path) -> Path | None:
    """The folder holding CIFAR-10's python batches (root/cifar-10-batches-py or root itself), if any."""
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            return folder
    return None


def _field(batch: dict, name: str) -> object:
    """A batch entry under its bytes key (pickles written by Python 2, as released) or its str key."""
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise KeyError(name)


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"{path}: missing; expected {CIFAR_LAYOUTS}")
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(_field(batch, "data"), dtype=np.uint8)
        labels = np.asarray(_field(batch, "labels"), dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise DataError(
            f"{path}: not a CIFAR-10 python batch (a pickled dict with b'data' and b'labels'): {exc}"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{path}: expected data of shape (N, 3072) and N labels, got data {data.shape} and {len(labels)} labels"
        )
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_cifar_pickles(folder: Path) -> Arrays:
    """CIFAR-10's python release: data_batch_1..5 for training, test_batch for testing."""
    train = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    classes = [str(i) for i in range(10)]
    return Arrays(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y, classes)


@register_dataset("cifar10")
def load_cifar10(root: str | Path | None, image_size: int | None, val_fraction: float, seed: int) -> DataBundle:
    """CIFAR-10 (32×32 RGB, 10 classes) from a local folder, in the ImageFolder or the python layout;
    trained with random flips and crops."""
    path = local_root(root, "cifar10", CIFAR_LAYOUTS)
    pickles = find_cifar_pickles(path)
    if pickles is not None:
        arrays = read_cifar_pickles(pickles).resized(image_size)
    elif (path / "train").is_dir():
        arrays = read_image_folder(path, image_size)
    else:
        raise DataError(f"data.root {str(path)!r}: not a CIFAR-10 folder; expected {CIFAR_LAYOUTS}")
    if len(arrays.classes) != 10 or int(max(arrays.train_y.max(), arrays.test_y.max())) > 9:
        raise DataError(f"{path}: CIFAR-10 has 10 classes, found {len(arrays.classes)}: {arrays.classes}")
    return arrays.bundle("cifar10", val_fraction, seed, augment=True)


@register_dataset("imagefolder")
def load_image_folder(root: str | Path | None, image_size: int | None, val_fraction: float, seed: int) -> DataBundle:
    """Any `root/{train,test}/<class>/` tree of images; classes are the sorted train sub-folders. Images are
    resized to `image_size` (needed when their sizes differ); one channel when all are grey; no augmentation."""
    path = local_root(root, "imagefolder", IMAGE_FOLDER_LAYOUT)
    return read_image_folder(path, image_size).bundle("imagefolder", val_fraction, seed, augment=False)


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (the MNIST format: 0, 0, type 0x08, ndim, big-endian sizes, data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise DataError(f"{path}: not an idx file of unsigned bytes (expected magic 0x0000 08 ndim)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path}: idx header says shape {shape} but the file holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_files(root: Path) -> dict[str, Path]:
    """The four Fashion-MNIST idx files under one of the accepted folders; DataError listing what is missing."""
    for folder in (root / "FashionMNIST" / "raw", root / "raw", root):
        found = {
            key: next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            for key, name in IDX_NAMES.items()
        }
        if all(found.values()):
            return {key: p for key, p in found.items() if p is not None}
    raise DataError(f"data.root {str(root)!r}: no Fashion-MNIST files; expected {FASHION_LAYOUT}")


@register_dataset("fashion_mnist")
def load_fashion_mnist(root: str | Path | None, image_size: int | None, val_fraction: float, seed: int) -> DataBundle:
    """Fashion-MNIST (28×28 grey, 10 classes) from its local idx files."""
    path = local_root(root, "fashion_mnist", FASHION_LAYOUT)
    files = find_idx_files(path)
    raw = {key: read_idx(p) for key, p in files.items()}
    for split in ("train", "test"):
        x, y = raw[f"{split}_x"], raw[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{files[f'{split}_x']}: expected (N, H, W) images and N labels, got {x.shape} and {y.shape}"
            )
    arrays = Arrays(
        torch.from_numpy(raw["train_x"].copy()).unsqueeze(1), torch.from_numpy(raw["train_y"].astype(np.int64)),
        torch.from_numpy(raw["test_x"].copy()).unsqueeze(1), torch.from_numpy(raw["test_y"].astype(np.int64)),
        [str(i) for i in range(10)],
    )
    return arrays.resized(image_size).bundle("fashion_mnist", val_fraction, seed, augment=False)
