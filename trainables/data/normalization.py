"""The one input normalisation shared by every data set (ImageNet statistics).

VOC models start from ImageNet-pretrained weights (paper, Appendix C), so all data sets,
the embedded shapes included, are normalised with the same per-channel statistics; keeping
them in one place means a model trained on one data set sees inputs on the same scale as on
any other, and plots can undo the normalisation exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "denormalize", "normalize"]

IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel (R, G, B) mean of images scaled to [0, 1]."""

IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel (R, G, B) standard deviation of images scaled to [0, 1]."""


def _channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(
            f"images: must have shape [..., 3, H, W] (RGB channels third from last), "
            f"got {tuple(images.shape)}"
        )
    mean = torch.tensor(IMAGE_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return mean, std


def normalize(images: Tensor) -> Tensor:
    """Map RGB values in [0, 1] to model inputs.

    Args:
        images: float Tensor [..., 3, H, W] with values in [0, 1].

    Returns:
        float Tensor of the same shape, ``(images - IMAGE_MEAN) / IMAGE_STD`` per channel.
    """
    mean, std = _channel_stats(images)
    return (images - mean) / std


def denormalize(images: Tensor) -> Tensor:
    """Undo :func:`normalize` (e.g. to draw attribution overlays).

    Args:
        images: float Tensor [..., 3, H, W] of normalised model inputs.

    Returns:
        float Tensor of the same shape with RGB values (in [0, 1] for in-range inputs;
        not clipped).
    """
    mean, std = _channel_stats(images)
    return images * std + mean
