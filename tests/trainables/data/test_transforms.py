from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data.normalization import denormalize
from trainables.data.transforms import ImageMaskTransform

COLOURS = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], np.uint8)


def quadrant_scene(height: int, width: int) -> tuple[Image.Image, torch.Tensor]:
    """An image whose colour encodes the label of each pixel (four quadrants)."""
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[: height // 2, width // 2 :] = 1
    labels[height // 2 :, : width // 2] = 2
    labels[height // 2 :, width // 2 :] = 3
    return Image.fromarray(COLOURS[labels]), torch.from_numpy(labels)


@pytest.mark.parametrize("train", [False, True])
def test_label_map_follows_the_image_geometry(train: bool) -> None:
    transform = ImageMaskTransform(32, train=train, crop_scale=(0.2, 1.0))
    image, labels = quadrant_scene(60, 80)
    torch.manual_seed(0)
    checked = 0
    maps = set()
    for _ in range(10):
        pixels, label_map = transform(image, labels)
        assert label_map is not None
        assert pixels.shape == (3, 32, 32)
        assert label_map.shape == (32, 32)
        assert label_map.dtype == torch.uint8
        assert set(label_map.unique().tolist()) <= {0, 1, 2, 3}
        # Away from label edges (where antialiased resampling blends colours over a couple of
        # pixels) each pixel has its label's colour; a misplaced map would be ~240 levels off.
        lab = label_map.numpy()
        interior = np.ones_like(lab, dtype=bool)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                interior &= np.roll(lab, (dy, dx), axis=(0, 1)) == lab
        interior[:2, :] = interior[-2:, :] = interior[:, :2] = interior[:, -2:] = False
        rgb = denormalize(pixels).permute(1, 2, 0).numpy() * 255
        error = np.abs(rgb[interior] - COLOURS[lab[interior]]).max(initial=0.0)
        assert error < 6, error
        checked += int(interior.sum())
        maps.add(lab.tobytes())
    assert checked > 1000
    assert (len(maps) > 1) == train  # random crops and flips differ, a resize does not


def test_eval_transform_is_a_plain_resize() -> None:
    transform = ImageMaskTransform(30, train=False)
    image, labels = quadrant_scene(60, 60)
    _, label_map = transform(image, labels)
    assert label_map is not None
    np.testing.assert_array_equal(label_map.numpy(), labels.numpy()[::2, ::2])
    pixels, none = transform(image)
    assert none is None
    assert type(pixels) is torch.Tensor
    assert pixels.dtype == torch.float32


def test_mismatched_label_map_and_bad_options() -> None:
    transform = ImageMaskTransform(16, train=False)
    image, labels = quadrant_scene(20, 30)
    with pytest.raises(ValueError, match=r"label_map: must have the image's shape"):
        transform(image, labels.T)
    with pytest.raises(ValueError, match="image_size: must be a positive integer, got -3"):
        ImageMaskTransform(-3, train=False)
    with pytest.raises(ValueError, match=r"crop_scale: must satisfy 0.0 < min <= max <= 1.0"):
        ImageMaskTransform(16, train=True, crop_scale=(0.0, 1.0))
