"""Local datasets: ImageFolder trees, CIFAR-10's python pickles and Fashion-MNIST idx files, written here in
their real formats; shapes, labels, splits, the decode cache, and clear errors for bad folders."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluators.splits import DataError, load_data
from search.cli import main

REAL_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"  # ../shared beside the clone


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache folder."""
    monkeypatch.setenv("SLIMSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def class_value(label: int, index: int) -> int:
    """The pixel value an image of class `label` is filled with, so labels can be checked from pixels."""
    return 20 * label + index


def write_image_folder(root: Path, classes: list[str], per_class: dict[str, int], size=(12, 12), mode="RGB") -> Path:
    """root/{train,test}/<class>/NNN.png, each image filled with class_value(label, i)."""
    for split, n in per_class.items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                value = class_value(label, i)
                color = value if mode == "L" else (value, 255 - value, value // 2)
                Image.new(mode, size, color).save(folder / f"{i:03d}.png")
    return root


def assert_labels_match_pixels(split) -> None:
    first_channel = split.x[:, 0].reshape(len(split), -1).float()
    assert torch.all(first_channel.std(dim=1) == 0)
    assert torch.equal((first_channel[:, 0] // 20).long(), split.y)


def test_image_folder_shapes_labels_and_stratified_split(tmp_path):
    root = write_image_folder(tmp_path / "pets", ["cat", "dog", "owl"], {"train": 8, "test": 3})
    data = load_data("imagefolder", root, image_size=None, val_fraction=0.25, seed=0)
    assert (data.num_classes, data.in_channels, data.image_size, data.augment) == (3, 3, 12, False)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 9)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (3, 12, 12)
    assert torch.bincount(data.val.y).tolist() == [2, 2, 2]
    for split in (data.train, data.val, data.test):
        assert_labels_match_pixels(split)
    x, _ = next(data.train.batches(4))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 3


def test_image_folder_grey_images_give_one_channel_and_resize(tmp_path):
    root = write_image_folder(tmp_path / "grey", ["a", "b"], {"train": 4, "test": 2}, size=(10, 10), mode="L")
    data = load_data("imagefolder", root, image_size=6, val_fraction=0.25, seed=0)
    assert data.in_channels == 1 and data.train.x.shape[1:] == (1, 6, 6)
    assert_labels_match_pixels(data.test)


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    root = write_image_folder(tmp_path / "mixed", ["a", "b"], {"train": 3, "test": 1})
    Image.new("RGB", (20, 16)).save(root / "train" / "b" / "big.png")
    with pytest.raises(DataError, match="big.png.*set data.image_size"):
        load_data("imagefolder", root, image_size=None)
    assert load_data("imagefolder", root, image_size=8).train.x.shape[-2:] == (8, 8)


def test_decoded_folder_is_cached_and_the_cache_follows_the_files(tmp_path, private_cache):
    root = write_image_folder(tmp_path / "cached", ["a", "b"], {"train": 4, "test": 2})
    first = load_data("imagefolder", root, image_size=None, val_fraction=0.25, seed=0)
    assert len(list(private_cache.glob("imagefolder-*.npz"))) == 1
    image = root / "train" / "a" / "000.png"
    stat = image.stat()
    image.write_bytes(b"not a png")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same files, same times: the cache answers
    again = load_data("imagefolder", root, image_size=None, val_fraction=0.25, seed=0)
    assert torch.equal(first.train.x, again.train.x)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a newer file: decoded again
    with pytest.raises(DataError, match="000.png: not a readable image"):
        load_data("imagefolder", root, image_size=None)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda r: r.mkdir(), "no train/ folder; expected root/train/<class>"),
        (lambda r: [(r / "train").mkdir(parents=True), (r / "test").mkdir()], "no class folders"),
        (lambda r: write_image_folder(r, ["a"], {"train": 2}) and (r / "test" / "a").mkdir(parents=True),
         "test: no image files"),
        (lambda r: write_image_folder(r, ["a"], {"train": 2}) and write_image_folder(r, ["zebra"], {"test": 1}),
         "class folders ['zebra'] are not in"),
    ],
)
def test_image_folder_layout_errors_name_the_path(tmp_path, make, expected):
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(DataError, match="bad") as err:
        load_data("imagefolder", root, image_size=8)
    assert expected in str(err.value)


def write_cifar_batches(folder: Path, per_batch: int = 10, str_keys: bool = False) -> Path:
    """CIFAR-10's python release in miniature: pickled dicts of b'data' (N, 3072) uint8 and b'labels'
    (or 'data' and 'labels', as a pickle written by Python 3 has them)."""
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        labels = [(b + i) % 10 for i in range(per_batch)]
        data = np.zeros((per_batch, 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):
            data[i, 0], data[i, 1], data[i, 2] = class_value(label, 0), b, i
        batch = {"batch_label": name, "labels": labels, "data": data.reshape(per_batch, -1)}
        with (folder / name).open("wb") as f:
            pickle.dump(batch if str_keys else {k.encode(): v for k, v in batch.items()}, f, protocol=2)
    return folder


@pytest.mark.parametrize("point_at, str_keys", [("parent", False), ("batches", False), ("batches", True)])
def test_cifar10_python_layout(tmp_path, point_at, str_keys):
    batches = write_cifar_batches(tmp_path / "cifar" / "cifar-10-batches-py", str_keys=str_keys)
    root = batches.parent if point_at == "parent" else batches
    data = load_data("cifar10", root, image_size=None, val_fraction=0.2, seed=0)
    assert (data.num_classes, data.in_channels, data.image_size, data.augment) == (10, 3, 32, True)
    assert (len(data.train) + len(data.val), len(data.val), len(data.test)) == (50, 10, 10)
    assert_labels_match_pixels(data.train)
    assert sorted(data.test.x[:, 2, 0, 0].tolist()) == list(range(10))  # channel planes kept apart
    assert torch.all(data.test.x[:, 1] == 5)
    small = load_data("cifar10", root, image_size=16)
    assert small.train.x.shape[1:] == (3, 16, 16) and small.train.x.dtype == torch.uint8


def test_cifar10_image_folder_layout(tmp_path):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    root = write_image_folder(tmp_path / "jpgs", classes, {"train": 3, "test": 1}, size=(32, 32))
    data = load_data("cifar10", root, image_size=None, val_fraction=1 / 3, seed=0)
    assert (data.num_classes, data.image_size, data.augment, len(data.test)) == (10, 32, True, 10)
    assert_labels_match_pixels(data.val)
    nine = write_image_folder(tmp_path / "nine", classes[:9], {"train": 2, "test": 1}, size=(32, 32))
    with pytest.raises(DataError, match="10 classes"):
        load_data("cifar10", nine)


def test_cifar10_errors_name_the_path_and_the_layouts(tmp_path):
    with pytest.raises(DataError, match="set data.root"):
        load_data("cifar10", None)
    with pytest.raises(DataError, match="missing.*no such folder.*cifar-10-batches-py"):
        load_data("cifar10", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*not a CIFAR-10 folder.*ImageFolder layout.*data_batch_1"):
        load_data("cifar10", tmp_path / "empty")
    batches = write_cifar_batches(tmp_path / "broken")
    (batches / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        load_data("cifar10", batches)
    (batches / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_data("cifar10", batches)
    (batches / "data_batch_3").write_bytes(pickle.dumps({b"data": OrderedDict(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load collections.OrderedDict"):
        load_data("cifar10", batches)
    (batches / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"expected data of shape \(N, 3072\)"):
        load_data("cifar10", batches)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_fashion(folder: Path, suffix: str, n_train: int = 50, n_test: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.repeat(np.array([class_value(y, 0) for y in labels], np.uint8), 28 * 28).reshape(n, 28, 28)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.mark.parametrize("where, suffix", [("FashionMNIST/raw", ".gz"), (".", "")])
def test_fashion_mnist_idx_files(tmp_path, where, suffix):
    write_fashion(tmp_path / "fm" / where, suffix)
    data = load_data("fashion_mnist", tmp_path / "fm", image_size=None, val_fraction=0.2, seed=0)
    assert (data.num_classes, data.in_channels, data.image_size, data.augment) == (10, 1, 28, False)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 10)
    assert data.train.x.dtype == torch.uint8
    for split in (data.train, data.val, data.test):
        assert_labels_match_pixels(split)
    assert load_data("fashion_mnist", tmp_path / "fm", image_size=16).test.x.shape[1:] == (1, 16, 16)


def test_fashion_mnist_errors(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="none.*no Fashion-MNIST files.*train-images-idx3-ubyte.*FashionMNIST/raw"):
        load_data("fashion_mnist", tmp_path / "none")
    folder = write_fashion(tmp_path / "fm", "")
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x0d\x01" + labels.read_bytes()[4:])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: not an idx file"):
        load_data("fashion_mnist", folder)
    write_fashion(folder, "")
    images = folder / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: idx header says shape"):
        load_data("fashion_mnist", folder)


def test_run_with_a_bad_data_root_exits_2_with_the_path(recipe_file, tmp_path, capsys):
    missing = tmp_path / "no_cifar_here"
    recipe = recipe_file(**{"data.dataset": "cifar10", "data.root": str(missing), "data.image_size": 32})
    assert main(["run", str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no_cifar_here" in err and "cifar-10-batches-py" in err and "Traceback" not in err


@pytest.mark.skipif(not REAL_CIFAR.is_dir(), reason=f"the CIFAR-10 JPEGs are not at {REAL_CIFAR}")
def test_real_cifar10_subset(tmp_path):
    """Three training and one test JPEG per class of the real set, read through the cifar10 loader."""
    classes = sorted(d.name for d in (REAL_CIFAR / "train").iterdir())
    for split, n in (("train", 3), ("test", 1)):
        for name in classes:
            (tmp_path / "sub" / split / name).mkdir(parents=True)
            for f in sorted((REAL_CIFAR / split / name).iterdir())[:n]:
                shutil.copy(f, tmp_path / "sub" / split / name / f.name)
    data = load_data("cifar10", tmp_path / "sub", image_size=None, val_fraction=1 / 3, seed=0)
    assert len(classes) == 10 and data.num_classes == 10
    assert data.train.x.shape[1:] == (3, 32, 32) and len(data.test) == 10
    assert sorted(data.test.y.tolist()) == list(range(10))
    assert 0.2 < float(data.train.mean.mean()) < 0.8
