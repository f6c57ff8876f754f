"""Square patches cropped at one of a grid of candidate locations, one per sample.

A glance-and-focus model (GFNet) looks at a few full-resolution patches of an image; its
policy picks, for each sample, one of `grid x grid` candidate locations. `PatchCrop`
holds those candidates (top-left corners, evenly spaced so that the first patch touches
the top-left corner of the image and the last the bottom-right one) and crops every
sample's patch with one batched gather (no loop over samples): the flat pixel indices of
every candidate patch are computed once (`pixels`), so a crop is one row lookup and one
`gather` (fewer small ops than building the indices per call, which matters at batch 1).
Cropping is indexing: free in FLOPs, like pooling.

Example:
    >>> crop = PatchCrop(image_size=60, patch_size=28, grid=7)
    >>> patches = crop(torch.randn(8, 1, 60, 60), torch.randint(0, 49, (8,)))  # (8, 1, 28, 28)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def _positive_int(value, name: str, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{owner}: {name} must be an int >= 1, got {value!r}")
    return value


def grid_corners(image_size: int, patch_size: int, grid: int, owner: str = "PatchCrop") -> Tensor:
    """Top-left corners of a `grid x grid` set of patch locations on a square image.

    Args:
        image_size: side of the (square) image.
        patch_size: side of the (square) patch, `<= image_size`.
        grid: locations per side, `<= image_size - patch_size + 1` (so that they are distinct);
            1 puts the only patch in the middle.
        owner: names the caller in errors.

    Returns:
        `(grid * grid, 2)` int64 `(top, left)`, row-major (index `i * grid + j` is row `i`,
        column `j`).

    Raises:
        ConfigError: naming `image_size`, `patch_size` or `grid`.
    """
    _positive_int(image_size, "image_size", owner)
    _positive_int(patch_size, "patch_size", owner)
    _positive_int(grid, "grid", owner)
    if patch_size > image_size:
        raise ConfigError(f"{owner}: patch_size={patch_size} is larger than the image ({image_size}x{image_size}); "
                          f"it must be <= {image_size}")
    room = image_size - patch_size
    if grid > room + 1:
        raise ConfigError(f"{owner}: grid={grid} does not fit: a {patch_size}x{patch_size} patch has only "
                          f"{room + 1} distinct positions per side on a {image_size}x{image_size} image")
    if grid == 1:
        offsets = torch.tensor([room // 2])
    else:
        offsets = torch.tensor([round(i * room / (grid - 1)) for i in range(grid)])
    top = offsets.repeat_interleave(grid)
    left = offsets.repeat(grid)
    return torch.stack([top, left], dim=1).long()


def crop_patches(x: Tensor, corners: Tensor, size: int) -> Tensor:
    """One `size x size` patch per sample, by one batched gather.

    Args:
        x: `(n, C, H, W)` images.
        corners: `(n, 2)` int64 `(top, left)` of each sample's patch (inside the image).
        size: side of the patches.

    Returns:
        `(n, C, size, size)` patches (a new tensor).
    """
    offsets = torch.arange(size, device=x.device)
    rows = (corners[:, 0:1] + offsets).unsqueeze(2)  # (n, size, 1)
    cols = (corners[:, 1:2] + offsets).unsqueeze(1)  # (n, 1, size)
    batch = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    # advanced indices split by the channel slice: the indexed dims come first, (n, size, size, C);
    # permuted back, that is a channels_last layout: kept for channels_last inputs
    patches = x[batch, :, rows, cols].permute(0, 3, 1, 2)
    keep_last = x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
    return patches.contiguous(memory_format=torch.channels_last if keep_last else torch.contiguous_format)


def patch_pixels(corners: Tensor, size: int, width: int) -> Tensor:
    """Flat (row-major) pixel indices of `size x size` patches on an image `width` wide.

    Args:
        corners: `(L, 2)` int64 `(top, left)` of each patch.
        size: side of the patches.
        width: width `W` of the image (index `row * W + col`).

    Returns:
        `(L, size * size)` int64, each row a patch's pixels in row-major order.
    """
    offsets = torch.arange(size, device=corners.device)
    rows = (corners[:, 0:1] + offsets).unsqueeze(2)  # (L, size, 1)
    cols = (corners[:, 1:2] + offsets).unsqueeze(1)  # (L, 1, size)
    return (rows * width + cols).flatten(1)


def gather_patches(x: Tensor, pixels: Tensor, size: int) -> Tensor:
    """One patch per sample by one `gather` of precomputed pixel indices.

    Args:
        x: `(n, C, H, W)` images (contiguous or channels-last).
        pixels: `(n, size * size)` int64 flat pixel indices (`patch_pixels` rows).
        size: side of the patches.

    Returns:
        `(n, C, size, size)` patches, channels-last when `x` is (and `C > 1`).
    """
    n, c = x.shape[:2]
    if c > 1 and x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).reshape(n, -1, c)  # (n, H * W, C), a view
        patches = flat.gather(1, pixels.unsqueeze(2).expand(n, pixels.shape[1], c))
        return patches.view(n, size, size, c).permute(0, 3, 1, 2)
    flat = x.reshape(n, c, -1)  # (n, C, H * W)
    return flat.gather(2, pixels.unsqueeze(1).expand(n, c, pixels.shape[1])).view(n, c, size, size)


class PatchCrop(nn.Module):
    """Crop each sample's patch at one of `grid x grid` candidate locations.

    Args:
        image_size: side of the square inputs.
        patch_size: side of the square patches (`<= image_size`).
        grid: candidate locations per side (`<= image_size - patch_size + 1`).

    Attributes:
        corners: `(num_locations, 2)` int64 buffer of `(top, left)` corners.
        pixels: `(num_locations, patch_size ** 2)` int64 buffer of each patch's flat pixel
            indices (`patch_pixels`).
        num_locations: `grid * grid`.

    Shapes:
        `forward(x (n, C, image_size, image_size), location (n,) int64) -> (n, C, patch_size, patch_size)`.
    """

    corners: Tensor
    pixels: Tensor

    def __init__(self, image_size: int, patch_size: int, grid: int, *, device=None) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.grid = image_size, patch_size, grid
        corners = grid_corners(image_size, patch_size, grid).to(device)
        self.register_buffer("corners", corners, persistent=False)
        self.register_buffer("pixels", patch_pixels(corners, patch_size, image_size), persistent=False)

    @property
    def num_locations(self) -> int:
        return self.grid * self.grid

    def forward(self, x: Tensor, location: Tensor) -> Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ConfigError(f"PatchCrop: built for {self.image_size}x{self.image_size} images, got input "
                              f"of shape {tuple(x.shape)}")
        return gather_patches(x, self.pixels[location], self.patch_size)

    def nearest(self, top_left: Tensor) -> Tensor:
        """The candidate location nearest to given corners (e.g. a digit's bounding box).

        Args:
            top_left: `(n, 2)` `(top, left)` in pixels.

        Returns:
            `(n,)` int64 location indices (Chebyshev-nearest corner).
        """
        distance = (top_left.to(self.corners).unsqueeze(1) - self.corners.unsqueeze(0)).abs().amax(dim=2)
        return distance.argmin(dim=1)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, patch_size={self.patch_size}, grid={self.grid}"
