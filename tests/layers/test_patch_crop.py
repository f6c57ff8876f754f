"""`PatchCrop`: grid of candidate corners, batched crops equal to slicing, nearest location."""
import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.layers.patch_crop import PatchCrop, grid_corners


def test_corners_span_the_image_row_major():
    corners = grid_corners(60, 28, 5)
    assert corners.shape == (25, 2)
    assert corners[0].tolist() == [0, 0] and corners[-1].tolist() == [32, 32]
    assert corners[1].tolist() == [0, 8] and corners[5].tolist() == [8, 0]


def test_crops_equal_slicing_per_sample():
    crop = PatchCrop(12, 5, 4)
    x = torch.randn(6, 2, 12, 12)
    location = torch.tensor([0, 15, 3, 7, 7, 12])
    patches = crop(x, location)
    assert patches.shape == (6, 2, 5, 5)
    for i, loc in enumerate(location.tolist()):
        top, left = crop.corners[loc].tolist()
        torch.testing.assert_close(patches[i], x[i, :, top:top + 5, left:left + 5], rtol=0, atol=0)


def test_nearest_location_of_a_corner_is_itself():
    crop = PatchCrop(60, 28, 7)
    assert torch.equal(crop.nearest(crop.corners), torch.arange(49))
    assert crop.nearest(torch.tensor([[1, 31]])).tolist() == [6]


@pytest.mark.parametrize("args,name", [((20, 21, 2), "patch_size"), ((20, 18, 4), "grid"),
                                       ((20, 5, 0), "grid"), ((0, 5, 2), "image_size")])
def test_bad_sizes_name_the_argument(args, name):
    with pytest.raises(ConfigError, match=name):
        PatchCrop(*args)


@pytest.mark.parametrize("chans,channels_last", [(1, False), (1, True), (3, False), (3, True)])
def test_gathered_crops_equal_the_indexed_ones_in_either_layout(chans, channels_last):
    from dynamicnets.layers.patch_crop import crop_patches

    crop = PatchCrop(12, 5, 4)
    x = torch.randn(5, chans, 12, 12)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    location = torch.tensor([0, 15, 3, 7, 7])
    patches = crop(x, location)
    assert torch.equal(patches, crop_patches(x, crop.corners[location], 5))
    assert patches.is_contiguous(memory_format=torch.channels_last if channels_last and chans > 1
                                 else torch.contiguous_format)
