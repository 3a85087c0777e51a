from __future__ import annotations

import pytest
import torch

from trainables.data.normalization import IMAGE_MEAN, IMAGE_STD, denormalize, normalize


def test_constants_are_the_imagenet_statistics() -> None:
    assert IMAGE_MEAN == (0.485, 0.456, 0.406)
    assert IMAGE_STD == (0.229, 0.224, 0.225)


def test_normalize_maps_the_mean_to_zero_and_round_trips() -> None:
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1).expand(3, 4, 5)
    torch.testing.assert_close(normalize(mean), torch.zeros(3, 4, 5))
    images = torch.rand(2, 3, 4, 5)
    torch.testing.assert_close(denormalize(normalize(images)), images)
    std_step = torch.tensor(IMAGE_MEAN) + torch.tensor(IMAGE_STD)
    torch.testing.assert_close(normalize(std_step.view(3, 1, 1)), torch.ones(3, 1, 1))


def test_wrong_channel_axis_is_refused() -> None:
    with pytest.raises(ValueError, match=r"images: must have shape \[..., 3, H, W\]"):
        normalize(torch.zeros(4, 4, 3))
