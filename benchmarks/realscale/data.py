"""CIFAR-10 JPEGs packed into one small file that travels to a GPU machine, decoded there in parallel.

The JPEGs of an ImageFolder tree (`root/{train,test}/<class>/*.jpg`) share their first few hundred bytes
(JFIF header, quantization and Huffman tables; 623 of about 920 bytes for CIFAR-10), so a pack stores that
prefix once and each file's remaining bytes: 18 MB for CIFAR-10's 60,000 images instead of 55 MB, and
every file is rebuilt byte for byte. The pack is an `.npz` of plain arrays (no pickles). Decoded images
are written as CIFAR-10's python batches, a layout the `cifar10` dataset reads from `data.root`, so a
study sees the same images, in the same order and with the same validation split, as it would from the
JPEG tree itself.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluators.folder_datasets import list_image_folder
from evaluators.splits import DataError

PACK_VERSION = 1
SPLITS = ("train", "test")
TRAIN_BATCHES = 5  # CIFAR-10's python release: data_batch_1..5 and test_batch
PARALLEL_FROM = 4096  # fewer images than this decode faster in one process than through a pool


@dataclass
class Encoded:
    """The JPEG files of one data set: each split's file contents and labels, and the class names."""

    files: dict[str, list[bytes]]
    labels: dict[str, np.ndarray]
    classes: list[str]


@dataclass
class Decoded:
    """Decoded images (N, H, W, 3) uint8 and int64 labels per split, and the class names."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: list[str]


def read_folder(root: Path, per_class: dict[str, int | None] | None = None) -> Encoded:
    """The JPEG bytes of an ImageFolder tree, in the order the `cifar10` loader lists them (class, then file
    name); `per_class` keeps only the first N files of each class in a split (None: all)."""
    index = list_image_folder(Path(root))
    files: dict[str, list[bytes]] = {}
    labels: dict[str, np.ndarray] = {}
    for split in SPLITS:
        limit = (per_class or {}).get(split)
        seen: dict[int, int] = {}
        chosen = []
        for path, label in index.files[split]:
            if limit is None or seen.get(label, 0) < limit:
                seen[label] = seen.get(label, 0) + 1
                chosen.append((path, label))
        files[split] = [Path(path).read_bytes() for path, _ in chosen]
        labels[split] = np.array([label for _, label in chosen], dtype=np.int64)
    return Encoded(files, labels, index.classes)


def write_pack(encoded: Encoded, dest: Path) -> dict[str, object]:
    """Write `encoded` as one pack file (the common prefix once, then every file's remaining bytes);
    returns its size and counts."""
    everything = [f for split in SPLITS for f in encoded.files[split]]
    if not everything:
        raise DataError("nothing to pack: the folder holds no images")
    prefix = os.path.commonprefix(everything)
    arrays: dict[str, np.ndarray] = {"prefix": np.frombuffer(prefix, dtype=np.uint8)}
    for split in SPLITS:
        rests = [f[len(prefix):] for f in encoded.files[split]]
        arrays[f"{split}_bytes"] = np.frombuffer(b"".join(rests), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0, *map(len, rests)], dtype=np.int64)
        arrays[f"{split}_labels"] = encoded.labels[split].astype(np.uint8)
    header = {"version": PACK_VERSION, "classes": encoded.classes}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez(f, **arrays)
    tmp.replace(dest)
    return {"path": str(dest), "bytes": dest.stat().st_size, "prefix_bytes": len(prefix),
            "images": {split: len(encoded.files[split]) for split in SPLITS},
            "jpeg_bytes": sum(map(len, everything))}


def read_pack(path: Path) -> Encoded:
    """The JPEG files of a pack, byte for byte as they were packed."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a JPEG pack ({exc}); make one with `python -m benchmarks.realscale --pack-data`")
    with z:
        header = json.loads(z["header"].tobytes())
        if header.get("version") != PACK_VERSION:
            raise DataError(f"{path}: pack version {header.get('version')}, expected {PACK_VERSION}; pack it again")
        prefix = z["prefix"].tobytes()
        files, labels = {}, {}
        for split in SPLITS:
            blob, offsets = z[f"{split}_bytes"].tobytes(), z[f"{split}_offsets"]
            files[split] = [prefix + blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            labels[split] = z[f"{split}_labels"].astype(np.int64)
    return Encoded(files, labels, list(header["classes"]))


def _decode_chunk(files: list[bytes]) -> np.ndarray:
    from PIL import Image

    out = []
    for data in files:
        with Image.open(io.BytesIO(data)) as img:
            out.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return np.stack(out)


def decode(encoded: Encoded, workers: int | None = None, parallel_from: int = PARALLEL_FROM) -> Decoded:
    """Decode every image with PIL (as the `cifar10` loader does), in `workers` processes (default: every
    core) when there are at least `parallel_from` of them. Call it before CUDA is initialized: the pool forks."""
    workers = workers or os.cpu_count() or 1
    images: dict[str, np.ndarray] = {}
    total = sum(len(encoded.files[s]) for s in SPLITS)
    if workers == 1 or total < parallel_from:
        images = {split: _decode_chunk(encoded.files[split]) for split in SPLITS}
    else:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for split in SPLITS:
                files = encoded.files[split]
                size = max(1, -(-len(files) // (4 * workers)))
                chunks = [files[i:i + size] for i in range(0, len(files), size)]
                images[split] = np.concatenate(list(pool.map(_decode_chunk, chunks)))
    shapes = {img.shape[1:] for img in images.values()}
    if len(shapes) != 1:
        raise DataError(f"train and test images differ in size: {sorted(shapes)}")
    return Decoded(images, dict(encoded.labels), encoded.classes)


def write_cifar_batches(decoded: Decoded, folder: Path) -> Path:
    """Write the images as CIFAR-10's python batches (`data_batch_1..5`, `test_batch`: rows of 3072 bytes,
    channel planes in order) under `folder/cifar-10-batches-py`, the layout the `cifar10` dataset reads from
    `data.root`; returns `folder`."""
    target = folder / "cifar-10-batches-py"
    target.mkdir(parents=True, exist_ok=True)
    names = {"train": [f"data_batch_{i}" for i in range(1, TRAIN_BATCHES + 1)], "test": ["test_batch"]}
    for split in SPLITS:
        x = decoded.images[split]
        if x.shape[1:] != (32, 32, 3):
            raise DataError(f"CIFAR-10 images are 32×32 RGB, these are {x.shape[1:]}")
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        parts = np.array_split(np.arange(len(x)), len(names[split]))
        for name, idx in zip(names[split], parts):
            batch = {b"data": rows[idx], b"labels": decoded.labels[split][idx].tolist()}
            with (target / name).open("wb") as f:
                pickle.dump(batch, f, protocol=4)  # numpy arrays pickle as the reader allows (not as 5 would)
    return folder


def pack_summary(encoded: Encoded) -> str:
    """One line: images per split and classes."""
    counts = ", ".join(f"{len(encoded.files[s])} {s}" for s in SPLITS)
    return f"{counts} images, {len(encoded.classes)} classes"
