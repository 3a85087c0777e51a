"""Attribution maps at a convolutional layer: Grad-CAM, and the collapsed maps the losses match.

Shapes: images [B, 3, H, W]; a layer's activations A [B, C, h, w]; maps [B, h, w] (or
[B, K, h, w] when K classes are explained per image). Maps are unnormalised; the matching loss
and the metrics normalise them as they need.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "channel_drop_mask",
    "ewa_map",
    "grad_cam",
    "swa_map",
    "upsample_maps",
]


def grad_cam(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    create_graph: bool = False,
) -> Tensor:
    """Grad-CAM of ``targets`` at ``layer``: ReLU(sum_k mean_hw(d logit_t / d A_k) * A_k).

    Args:
        model: maps images [B, 3, H, W] to logits [B, num_classes]. Its train/eval mode is the
            caller's choice.
        layer: a submodule of ``model``; its output A [B, C, h, w] is explained. Its output must
            not be modified in place by the next module (e.g. a following ``ReLU(inplace=True)``).
        images: [B, 3, H, W].
        targets: [B] int64, one class index per image.
        create_graph: keep the graph of the map so a loss on it can be back-propagated (used by
            training; second order through the part of ``model`` after ``layer`` only).

    Returns:
        [B, h, w] maps at the layer's resolution, unnormalised, >= 0.
    """
    if targets.shape != images.shape[:1]:
        raise ValueError(
            f"targets: must hold one class index per image, shape {tuple(images.shape[:1])}, "
            f"got {tuple(targets.shape)}"
        )
    captured: list[Tensor] = []

    def keep_output(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        if not output.requires_grad:
            # Frozen weights and constant input: start the graph here, so the backward pass
            # covers only the head after the layer.
            output = output.detach().requires_grad_()
        captured.append(output)
        return output

    handle = layer.register_forward_hook(keep_output)
    try:
        with torch.enable_grad():
            logits = model(images)
            activations = captured[-1]
            selected = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
            (gradients,) = torch.autograd.grad(selected, activations, create_graph=create_graph)
    finally:
        handle.remove()
    if not create_graph:
        activations = activations.detach()
    return swa_map(activations, gradients.mean(dim=(2, 3)))


def ewa_map(activations: Tensor) -> Tensor:
    """Equally weighted collapsed map (attention transfer): mean_c A_c^2.

    Args:
        activations: [B, C, h, w].

    Returns:
        [B, h, w].
    """
    return activations.pow(2).mean(dim=1)


def swa_map(
    activations: Tensor, channel_weights: Tensor, *, drop_mask: Tensor | None = None
) -> Tensor:
    """Sensitivity-weighted collapsed map ReLU(sum_c w_c A_c), optionally with channels dropped.

    Args:
        activations: [B, C, h, w].
        channel_weights: [B, C] (one map per image) or [B, K, C] (K maps per image, e.g. one
            per class); Grad-CAM's weights are the spatial means of d y_t / d A_c.
        drop_mask: same shape as ``channel_weights``, 0/1 (SSWA's Bernoulli keep mask). Not
            rescaled by 1 / (1 - p): the matching loss normalises each map, so a scale is moot.

    Returns:
        [B, h, w] for [B, C] weights, [B, K, h, w] for [B, K, C] weights.
    """
    if drop_mask is not None:
        channel_weights = channel_weights * drop_mask
    if channel_weights.dim() == 2:
        return F.relu(torch.einsum("bc,bchw->bhw", channel_weights, activations))
    return F.relu(torch.einsum("bkc,bchw->bkhw", channel_weights, activations))


def channel_drop_mask(
    shape: torch.Size | tuple[int, ...],
    drop_p: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bernoulli keep mask for SSWA: each entry is 0 with probability ``drop_p``, else 1."""
    if not 0.0 <= drop_p < 1.0:
        raise ValueError(f"drop_p: must be in [0, 1), got {drop_p}")
    uniform = torch.rand(shape, device=device, generator=generator)
    return (uniform >= drop_p).to(dtype)


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of maps [B, h, w] (or [B, K, h, w]) to [B, (K,) *size]."""
    leading = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return up.reshape(*leading, *size)
