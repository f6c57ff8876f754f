"""Writers of tiny synthetic data sets in the official on-disk formats (IDX, the CIFAR pickles,
image folders), shared by the test folders' fixtures."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(values: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array; ``magic`` overrides the computed magic number."""
    values = np.asarray(values, dtype=np.uint8)
    magic = (0x08 << 8 | values.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in values.shape)
    return header + values.tobytes()


def write_idx(path: Path, values: np.ndarray, *, magic: int | None = None) -> Path:
    """Write an IDX file, gzipped when ``path`` ends in ``.gz``."""
    data = idx_bytes(values, magic)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist(root: Path, *, n_train=30, n_test=0, gz=True, side=28, seed=0) -> dict:
    """A tiny MNIST folder; returns the arrays written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        if n == 0:
            continue
        images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays


def _dump(path: Path, content) -> None:
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def cifar_batch(n: int, label_key: bytes, num_classes: int, rng) -> dict:
    return {
        b"batch_label": b"synthetic",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar10(root: Path, *, per_batch=8, n_test=0, meta=True, seed=0) -> dict:
    """A tiny cifar-10-batches-py folder; returns the batch dicts by file name."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for i in range(1, 6):
        written[f"data_batch_{i}"] = cifar_batch(per_batch, b"labels", 10, rng)
    if n_test:
        written["test_batch"] = cifar_batch(n_test, b"labels", 10, rng)
    for name, content in written.items():
        _dump(root / name, content)
    if meta:
        _dump(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return written


def write_cifar100(root: Path, *, n_train=40, n_test=0, seed=0) -> dict:
    """A tiny cifar-100-python folder; returns the dicts by file name."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {"train": cifar_batch(n_train, b"fine_labels", 100, rng)}
    if n_test:
        written["test"] = cifar_batch(n_test, b"fine_labels", 100, rng)
    for name, content in written.items():
        content[b"coarse_labels"] = [v // 5 for v in content[b"fine_labels"]]
        _dump(root / name, content)
    _dump(root / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return written


def write_imagefolder(root: Path, classes=("cat", "ant", "bee"), per_class=3, size=(6, 5)):
    """PNG and JPEG images in class folders; returns {class name: [pixel arrays]}."""
    rng = np.random.default_rng(0)
    written = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        written[c] = []
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
            written[c].append(pixels)
    return written
