"""Reader for a folder of class sub-folders of PNG/JPEG images (the torchvision layout).

``DIR/<class name>/<image>.png|.jpg|.jpeg``; class indices follow the sorted class names.
Every image is converted to RGB and must have the same size as the first one (nothing is
resized behind the user's back).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .files import require_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _class_dirs(root: Path) -> list[Path]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"directory '{root}' has no class sub-folders; expected DIR/<class>/<image>.png|.jpg"
        )
    return classes


def _image_files(class_dir: Path) -> list[Path]:
    files = sorted(
        p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DataError(
            f"class folder '{class_dir}' holds no image; expected files ending in "
            + ", ".join(IMAGE_SUFFIXES)
        )
    return files


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise DataError(f"'{path}' is a truncated or corrupt image: {err}") from err


def read_image_folder(root: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read every image of an image folder into memory.

    **Arguments:**

    - `root`: the folder holding one sub-folder per class.

    **Returns:** images uint8 ``(N, 3, H, W)``, labels int64 ``(N,)`` and the class names
    (index = label).

    **Raises:** DataError for a missing/empty folder, a class folder without images, a
    corrupt image, or an image whose size differs from the first image's.
    """
    root = require_dir(root, "one sub-folder of PNG/JPEG images per class")
    classes = _class_dirs(root)
    images, labels = [], []
    first: tuple[Path, tuple[int, int, int]] | None = None
    for label, class_dir in enumerate(classes):
        for path in _image_files(class_dir):
            pixels = _read_rgb(path)
            if first is None:
                first = (path, pixels.shape)
            elif pixels.shape != first[1]:
                raise DataError(
                    f"'{path}' is {pixels.shape[1]}x{pixels.shape[0]} pixels, expected "
                    f"{first[1][1]}x{first[1][0]} like '{first[0]}' "
                    "(all images must share one size)"
                )
            images.append(pixels)
            labels.append(label)
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return stacked, torch.tensor(labels, dtype=torch.int64), [c.name for c in classes]
