"""``load_data(spec)``: turn a spec string such as ``"cifar10:path/to/cifar-10-batches-py"``
into a :class:`DataBundle` of train/validation(/test) datasets.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import DataError
from .augment import Augmentations, Cutout, RandomCropFlip, cutout_fill
from .bundle import DataBundle
from .cifar import read_cifar_batch, read_label_names
from .cluttered import load_or_generate, parse_options
from . import moving_digits
from .embedded import digits_arrays, mnist1d_arrays
from .files import find_file, require_dir
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from .imagefolder import read_image_folder
from .in_memory import InMemoryDataset
from .jump_task import generate_tokens, one_hot_signals
from .jump_task import parse_options as parse_jump_options
from .labels import check_labels
from .preprocessing import CIFAR10_STATS, CIFAR100_STATS, MNIST_STATS
from .split import split_indices

DATASETS = (
    "digits", "mnist1d", "mnist", "cifar10", "cifar100", "imagefolder", "cluttered_mnist", "moving_mnist",
    "jump_task",
)
"""Names a spec may start with; all but the first two need ``:DIR``."""

_NEEDS_PATH = ("mnist", "cifar10", "cifar100", "imagefolder", "cluttered_mnist", "moving_mnist")
_TAKES_OPTIONS = {"cluttered_mnist": parse_options, "moving_mnist": moving_digits.parse_options}
_BUILT_IN_OPTIONS = {"jump_task": parse_jump_options}
"""Built-in data sets that take ``name?options`` (no path)."""


class _Source(NamedTuple):
    """A data set as read: the whole training set, the test set if any, and how to train."""

    full_train: InMemoryDataset
    test: InMemoryDataset | None
    num_classes: int
    train_augment: Callable[[torch.Tensor], torch.Tensor] | None


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split ``"name"`` or ``"name:path"`` (``cluttered_mnist`` and ``moving_mnist`` also take ``:path?options``,
    which are checked here and dropped; see :func:`spec_options`).

    Returns:
        the lower-case name and the path (``None`` when absent).

    Raises:
        DataError: an unknown name, a missing path where one is needed, or a path
            given to a data set that takes none.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec {spec!r} is empty; expected one of {', '.join(DATASETS)}")
    name, _, path = spec.strip().partition(":")
    name, _, inline = name.partition("?")  # built-in specs take options without a path
    name = name.strip().lower()
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset '{name}' in spec '{spec}'; valid names: {', '.join(DATASETS)}"
        )
    if name in _TAKES_OPTIONS:
        path, _, query = path.partition("?")
        _TAKES_OPTIONS[name](query)  # bad options fail here, before any file is read
    if name in _BUILT_IN_OPTIONS:
        _BUILT_IN_OPTIONS[name](inline)
    elif inline:
        raise DataError(f"dataset '{name}' takes no options, got '{spec}'")
    if name in _NEEDS_PATH and not path:
        raise DataError(f"dataset '{name}' needs a directory: write the spec as '{name}:DIR'")
    if name not in _NEEDS_PATH and path:
        raise DataError(f"dataset '{name}' is built in and takes no path, got '{spec}'")
    return name, (Path(path).expanduser() if path else None)


def spec_options(spec: str) -> str:
    """The ``KEY=VALUE&...`` text after ``?`` in a ``cluttered_mnist:DIR?...`` (or
    ``moving_mnist:DIR?...``) spec ('' if none)."""
    return spec.partition("?")[2]


_MNIST_CLASSES = 10  # MNIST, Fashion-MNIST and KMNIST all declare 10 classes


def _digits(_: Path | None) -> _Source:
    x, y = digits_arrays()
    return _Source(InMemoryDataset(x, y), None, 10, None)


def _mnist1d(_: Path | None) -> _Source:
    x, y, x_test, y_test = mnist1d_arrays()
    return _Source(InMemoryDataset(x, y), InMemoryDataset(x_test, y_test), 10, None)


def _read_idx_pair(root: Path, prefix: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    image_name, label_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    image_file = find_file(root, [image_name, image_name + ".gz"])
    label_file = find_file(root, [label_name, label_name + ".gz"])
    images, labels = read_idx(image_file, IMAGES_MAGIC), read_idx(label_file, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"'{image_file}' holds {len(images)} images but '{label_file}' holds "
            f"{len(labels)} labels; expected equal counts"
        )
    if len(labels) == 0:
        raise DataError(f"'{image_file}' holds no images; expected at least one")
    check_labels(labels, num_classes, f"'{label_file}'")
    return images.unsqueeze(1), labels.to(torch.int64)


def _has_idx(root: Path, prefix: str) -> bool:
    return any(root.glob(f"{prefix}-*-idx?-ubyte*"))


def _mnist(path: Path) -> _Source:
    root = require_dir(path, "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
    num_classes = _MNIST_CLASSES
    images, labels = _read_idx_pair(root, "train", num_classes)
    mean, std = MNIST_STATS
    test = None
    if _has_idx(root, "t10k"):
        test_images, test_labels = _read_idx_pair(root, "t10k", num_classes)
        if test_images.shape[1:] != images.shape[1:]:
            raise DataError(
                f"test images in '{root}' are {tuple(test_images.shape[2:])}, expected "
                f"{tuple(images.shape[2:])} like the training images"
            )
        test = InMemoryDataset(test_images, test_labels, scale=1 / 255, mean=mean, std=std)
    full = InMemoryDataset(images, labels, scale=1 / 255, mean=mean, std=std)
    return _Source(full, test, num_classes, None)


def _digit_reader(spec: str):
    """The MNIST folder of a generated-data spec and its split reader (``None`` for an
    absent test split; 28x28 digits required)."""
    _, path = parse_spec(spec)
    root = require_dir(path, "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")

    def read_split(prefix: str):
        if prefix != "train" and not _has_idx(root, prefix):
            return None
        images, labels = _read_idx_pair(root, prefix, _MNIST_CLASSES)
        if images.shape[2:] != (28, 28):
            raise DataError(f"'{root}' holds {tuple(images.shape[2:])} images, expected (28, 28)")
        return images, labels

    return root, read_split


def _cluttered_data(spec: str) -> tuple[Path, dict]:
    root, read_split = _digit_reader(spec)
    return root, load_or_generate(root, parse_options(spec_options(spec)), read_split)


def _moving_mnist(spec: str) -> _Source:
    root, read_split = _digit_reader(spec)
    data = moving_digits.load_or_generate(root, moving_digits.parse_options(spec_options(spec)), read_split)
    full = InMemoryDataset(data["train_videos"], data["train_labels"], scale=1 / 255)
    test = None
    if data["test_videos"] is not None:
        test = InMemoryDataset(data["test_videos"], data["test_labels"], scale=1 / 255)
    return _Source(full, test, _MNIST_CLASSES, None)


def _cluttered_mnist(spec: str) -> _Source:
    _, data = _cluttered_data(spec)
    full = InMemoryDataset(data["train_images"], data["train_labels"], scale=1 / 255)
    test = None
    if data["test_images"] is not None:
        test = InMemoryDataset(data["test_images"], data["test_labels"], scale=1 / 255)
    return _Source(full, test, _MNIST_CLASSES, None)


def cluttered_boxes(spec: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Where each digit of a ``cluttered_mnist:DIR?...`` spec was placed.

    Args:
        spec: the same spec as given to :func:`load_data` (generates the cache if absent).

    Returns:
        train and test (``None`` without ``t10k`` files) boxes, ``(N, 4)`` int64
        ``(top, left, bottom, right)`` in canvas pixels, bottom/right exclusive, indexed like
        the full training set (``bundle.train.indices`` / ``bundle.val.indices`` select
        into it) and the test set.
    """
    name, _ = parse_spec(spec)
    if name != "cluttered_mnist":
        raise DataError(f"cluttered_boxes needs a 'cluttered_mnist:DIR' spec, got '{spec}'")
    _, data = _cluttered_data(spec)
    return data["train_boxes"], data["test_boxes"]


def _jump_task(spec: str) -> _Source:
    options = parse_jump_options(spec_options(spec))
    tokens, labels = generate_tokens(options)
    return _Source(InMemoryDataset(one_hot_signals(tokens, options.vocab), labels), None, options.vocab, None)


def _read_cifar_files(files: list[Path], label_key: bytes, num_classes: int):
    parts = [read_cifar_batch(f, label_key, num_classes) for f in files]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _cifar(path: Path, *, hundred: bool) -> _Source:
    if hundred:
        train_names, test_name, meta_name = ["train"], "test", "meta"
        label_key, names_key, num_classes = b"fine_labels", b"fine_label_names", 100
        mean, std = CIFAR100_STATS
        layout = "the CIFAR-100 python files 'train' (and 'test', 'meta') of cifar-100-python"
    else:
        train_names = [f"data_batch_{i}" for i in range(1, 6)]
        test_name, meta_name = "test_batch", "batches.meta"
        label_key, names_key, num_classes = b"labels", b"label_names", 10
        mean, std = CIFAR10_STATS
        layout = (
            "the CIFAR-10 python files data_batch_1..5 (and test_batch, batches.meta) "
            "of cifar-10-batches-py"
        )
    root = require_dir(path, layout)
    train_files = [find_file(root, [n]) for n in train_names]
    meta_file = find_file(root, [meta_name], required=False)
    if meta_file is not None:
        class_names = read_label_names(meta_file, names_key)
        if len(class_names) != num_classes:
            raise DataError(
                f"'{meta_file}' lists {len(class_names)} classes, expected {num_classes}"
            )
    images, labels = _read_cifar_files(train_files, label_key, num_classes)
    test_file = find_file(root, [test_name], required=False)
    test = None
    if test_file is not None:
        test_images, test_labels = _read_cifar_files([test_file], label_key, num_classes)
        test = InMemoryDataset(test_images, test_labels, scale=1 / 255, mean=mean, std=std)
    full = InMemoryDataset(images, labels, scale=1 / 255, mean=mean, std=std)
    return _Source(full, test, num_classes, RandomCropFlip(padding=4, flip=True))


def _with_cutout(source: _Source, size: int, spec: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DataError(f"cutout for '{spec}' must be an integer >= 0 (0 = off), got {size!r}")
    if size == 0:
        return source.train_augment
    data = source.full_train
    if len(data.input_shape) != 3:
        raise DataError(f"cutout needs images (channels, height, width); '{spec}' has samples of shape "
                        f"{data.input_shape}")
    fill = cutout_fill(data.scale, data.mean, data.input_shape[0], data.samples.dtype)
    cut = Cutout(size, fill)
    return cut if source.train_augment is None else Augmentations(source.train_augment, cut)


def _imagefolder(path: Path) -> _Source:
    images, labels, classes = read_image_folder(path)
    return _Source(InMemoryDataset(images, labels, scale=1 / 255), None, len(classes), None)


def load_data(
    spec: str, *, val_size: float | int | None = 0.1, seed: int = 0, augment: bool = True, cutout: int = 0
) -> DataBundle:
    """Load a data set and split a validation set off its training set.

    Specs:

    - ``digits``: scikit-learn's 8x8 digits, x in [0, 1], input ``(1, 8, 8)``, no test split.
    - ``mnist1d``: MNIST-1D generated locally (4000 train / 1000 test), input ``(1, 40)``.
    - ``mnist:DIR``: IDX files ``train-{images-idx3,labels-idx1}-ubyte[.gz]`` (and ``t10k-*``
      as the test split when present); input ``(1, 28, 28)`` normalised with MNIST's
      mean/std.
    - ``cifar10:DIR`` / ``cifar100:DIR``: the official python-pickle layout
      (``data_batch_1..5`` [+ ``test_batch``, ``batches.meta``] / ``train`` [+ ``test``,
      ``meta``]); input ``(3, 32, 32)`` normalised per channel; training split augmented
      with random crop (pad 4) + horizontal flip when ``augment``.
    - ``imagefolder:DIR``: ``DIR/<class>/<image>.png|.jpg``, classes in sorted order, RGB
      scaled to [0, 1]; every image must have the same size. No test split.
    - ``cluttered_mnist:DIR?canvas=60&variant=cluttered&fragments=8&seed=0&cache=FOLDER``
      (options optional, these are the defaults; ``canvas`` is ``N`` or ``HxW``, at least
      28): each MNIST digit of ``DIR`` at a random place on a blank canvas; ``cluttered``
      adds ``fragments`` random 8x8 crops of other digits (pixel-wise max), ``translated``
      none. Generated once from ``seed`` and cached as ``cluttered_<H>x<W>_<variant>_<seed>.pt``
      in ``DIR`` (or ``cache``). Input ``(1, H, W)`` scaled to [0, 1], not mean/std
      normalised (the canvas is mostly blank, MNIST's statistics do not hold). Digit boxes:
      :func:`cluttered_boxes`.
    - ``moving_mnist:DIR?frames=16&size=48&visible=4&occluders=2&fill=noise&videos=6000&seed=0&cache=FOLDER``
      (options optional, these are the defaults; ``size`` is ``N`` or ``HxW``, at least 28):
      the first ``videos`` MNIST digits of ``DIR`` (and of its test split), each bouncing over
      a blank canvas for ``frames`` frames with ``occluders`` moving 14x14 squares, and
      hidden under a 28x28 block in all but ``visible`` random frames (squares and blocks of
      uniform noise, or flat gray with ``fill=gray``)
      (:mod:`dynamicnets.data.moving_digits`). Generated once from ``seed`` and cached as a
      uint8 ``.pt`` in ``DIR`` (or ``cache``). Input ``(1, T, H, W)`` (channels, frames, as
      ``nn.Conv3d`` reads videos) scaled to [0, 1], not mean/std normalised.
    - ``jump_task?length=64&vocab=16&seed=0&size=10000`` (options optional, these are the
      defaults): LSTM-Jump's number prediction, generated from ``seed``: ``size`` sequences
      of ``length`` tokens in ``0..vocab-1``; the first token is an index, the label (one of
      ``vocab`` classes) is the token at that index (:mod:`dynamicnets.data.jump_task`).
      Input ``(vocab, length)`` one-hot. No test split.

    Args:
        spec: ``"name"`` or ``"name:DIR"``, name from :data:`DATASETS`.
        val_size: float in (0, 1) = fraction of the training set, int = number of samples,
            ``None`` = no validation split (``val`` is empty, ``train`` holds every training sample).
        seed: seed of the split; the same seed gives the same split.
        augment: augment the training split (validation and test never are).
        cutout: when > 0 (and `augment`), also cut a `cutout` x `cutout` square filled
            with the dataset mean out of every training image, after the data set's own
            augmentation (:class:`~dynamicnets.data.augment.Cutout`); image data only.

    Returns:
        a :class:`DataBundle`; every dataset yields ``(x, y)``, ``x`` float32 of
        ``input_shape``, ``y`` int64 scalar.

    Raises:
        DataError: naming the file or folder at fault.
    """
    name, path = parse_spec(spec)
    readers = {
        "digits": _digits,
        "mnist1d": _mnist1d,
        "mnist": _mnist,
        "cifar10": lambda p: _cifar(p, hundred=False),
        "cifar100": lambda p: _cifar(p, hundred=True),
        "imagefolder": _imagefolder,
        "cluttered_mnist": lambda _: _cluttered_mnist(spec),
        "jump_task": lambda _: _jump_task(spec),
        "moving_mnist": lambda _: _moving_mnist(spec),
    }
    source = readers[name](path)
    if val_size is None:
        train_idx = torch.arange(len(source.full_train))
        val_idx = torch.zeros(0, dtype=torch.int64)
    else:
        train_idx, val_idx = split_indices(len(source.full_train), val_size, seed)
    train_augment = _with_cutout(source, cutout, spec) if augment else None
    return DataBundle(
        name=name,
        train=source.full_train.with_indices(train_idx, augment=train_augment),
        val=source.full_train.with_indices(val_idx),
        test=source.test,
        num_classes=source.num_classes,
        input_shape=source.full_train.input_shape,
    )
