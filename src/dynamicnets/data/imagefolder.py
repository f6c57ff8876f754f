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


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _sixteen_bit_to_rgb(path: Path, image: Image.Image) -> np.ndarray:
    """A 16-bit grayscale image as 8-bit RGB, 0..65535 mapped to 0..255 with rounding
    (Pillow's own `convert("RGB")` would clip every value above 255 to white)."""
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(
            f"'{path}' has pixel values in [{values.min()}, {values.max()}], expected a 16-bit image (0..65535)"
        )
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _read_rgb(path: Path) -> np.ndarray:
    """The pixels of one image as uint8 ``(H, W, 3)``.

    8-bit images of any mode are converted to RGB; 16-bit grayscale images (PNG) are
    scaled down to 8 bits; 32-bit integer or float images are refused.

    Raises:
        DataError: naming the file, when it is corrupt or of an unsupported pixel type.
    """
    try:
        with Image.open(path) as image:
            if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
                return _sixteen_bit_to_rgb(path, image)
            if image.mode in ("I", "F"):
                raise DataError(
                    f"'{path}' has {'32-bit integer' if image.mode == 'I' else 'floating-point'} pixels "
                    f"(mode {image.mode}); expected an 8-bit or 16-bit image"
                )
            return np.asarray(image.convert("RGB"))
    except DataError:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise DataError(f"'{path}' is a truncated or corrupt image: {err}") from err


def read_image_folder(root: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read every image of an image folder into memory.

    Args:
        root: the folder holding one sub-folder per class.

    Returns:
        images uint8 ``(N, 3, H, W)``, labels int64 ``(N,)`` and the class names
        (index = label).

    Raises:
        DataError: a missing/empty folder, a class folder without images, a
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
