"""Attribution-matching losses (EWA, SWA, SSWA, Grad-CAM cos) between a teacher and a student.

Loss (paper eq. 2): ``beta * sum_j || M_s/||M_s|| - M_t/||M_t|| ||_2``, averaged over the batch,
with one matched layer j (the last convolutional block) and the maps M defined in
:mod:`trainables.attribution`. ``gradcam_cos`` (Parchami-Araghi et al., "Good Teachers
Explain", ECCV 2024) matches SWA's map, which is Grad-CAM at the matched layer, with
``1 - cos(M_s, M_t)`` instead: in [0, 2], and equal to half the square of SWA's distance. The
caller multiplies by beta.

Cost model, which is the point of this module (the official code does neither):

* the teacher's map needs no gradient through the teacher's body: :func:`teacher_targets` runs
  the teacher under ``no_grad`` and differentiates its head only (or uses the closed form
  W[y] / (h*w) where the head is global-average-pool + linear);
* the student's sensitivity weights come from ``autograd.grad`` at the matched layer with
  ``create_graph=True``: the second-order graph covers the head, never the whole network.

Matching several classes per image (top-k, or all positive labels) is batched: the matched
features are replicated K times through the head, one backward pass for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.attribution import channel_drop_mask, ewa_map, swa_map
from trainables.matching_kinds import CLASS_SPECIFIC_KINDS, MATCHING_KINDS, MatchingKind
from trainables.models import forward_features, forward_head, linear_head_weight
from trainables.precision import widen

__all__ = [
    "CLASS_SELECTIONS",
    "MATCHING_KINDS",
    "MatchingConfig",
    "MatchingKind",
    "TeacherTargets",
    "cosine_map_distance",
    "matching_loss",
    "normalized_map_distance",
    "select_classes",
    "sensitivity_weights",
    "teacher_targets",
]

ClassSelection = Literal["top1", "topk", "positives"]
CLASS_SELECTIONS: tuple[ClassSelection, ...] = ("top1", "topk", "positives")
_EPS = 1e-12


@dataclass(frozen=True)
class MatchingConfig:
    """Which map is matched and for which classes.

    Attributes:
        kind: ``none`` (plain compression), ``ewa``, ``swa``, ``sswa`` or ``gradcam_cos``
            (:data:`trainables.matching_kinds.MATCHING_KINDS`).
        drop_p: SSWA's channel drop probability, in [0, 1); must be 0 unless kind is ``sswa``.
        classes: ``top1`` (the teacher's top-1 class, as the paper and the ECCV 2024 loss),
            ``topk`` (the teacher's ``top_k`` highest logits) or ``positives`` (every positive
            ground-truth label). The class-specific kinds (SWA, SSWA, Grad-CAM cos) match one
            map per selected class and average over an image's classes; EWA has no class.
        top_k: number of classes for ``topk``.
    """

    kind: MatchingKind = "swa"
    drop_p: float = 0.0
    classes: ClassSelection = "top1"
    top_k: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in MATCHING_KINDS:
            problems.append(f"kind: must be one of {list(MATCHING_KINDS)}, got {self.kind!r}")
        if self.classes not in CLASS_SELECTIONS:
            problems.append(
                f"classes: must be one of {list(CLASS_SELECTIONS)}, got {self.classes!r}"
            )
        if not 0.0 <= self.drop_p < 1.0:
            problems.append(f"drop_p: must be in [0, 1), got {self.drop_p}")
        elif self.drop_p > 0.0 and self.kind != "sswa":
            problems.append(
                f"drop_p: applies only to kind 'sswa', got {self.drop_p} with {self.kind!r}"
            )
        if self.top_k < 1:
            problems.append(f"top_k: must be a positive integer, got {self.top_k}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def class_specific(self) -> bool:
        """Whether the maps depend on a class (SWA, SSWA and Grad-CAM cos do, EWA does not)."""
        return self.kind in CLASS_SPECIFIC_KINDS


@dataclass(frozen=True)
class TeacherTargets:
    """One teacher forward pass: what KD and the matching loss need, all without autograd.

    Attributes:
        logits: [B, num_classes].
        features: [B, C_t, h, w] at the teacher's matched layer.
        classes: [B, K] int64 classes whose maps are matched (K = 1 for top-1).
        valid: [B, K] bool; False marks padding where an image has fewer than K classes.
        maps: [B, K, h, w] the teacher's maps (K = 1 for EWA), or None for kind ``none``.
    """

    logits: Tensor
    features: Tensor
    classes: Tensor
    valid: Tensor
    maps: Tensor | None


def select_classes(
    teacher_logits: Tensor, labels: Tensor | None, config: MatchingConfig
) -> tuple[Tensor, Tensor]:
    """Classes to match per image: ([B, K] int64 indices, [B, K] bool validity).

    Args:
        teacher_logits: [B, num_classes].
        labels: [B, num_classes] multi-hot ground truth; needed for ``positives``.
        config: the selection rule.
    """
    batch = teacher_logits.shape[0]
    if config.classes == "top1":
        classes = teacher_logits.argmax(dim=1, keepdim=True)
    elif config.classes == "topk":
        classes = teacher_logits.topk(min(config.top_k, teacher_logits.shape[1]), dim=1).indices
    else:
        if labels is None:
            raise ValueError("labels: required when classes is 'positives'")
        positive = labels > 0.5
        k = max(int(positive.sum(dim=1).max().item()), 1)
        # Stable sort puts positive classes first, in class order; the rest is padding.
        order = torch.sort((~positive).to(torch.int8), dim=1, stable=True).indices[:, :k]
        valid = positive.gather(1, order)
        return order, valid
    return classes, torch.ones(batch, classes.shape[1], dtype=torch.bool, device=classes.device)


def sensitivity_weights(
    model: nn.Module,
    features: Tensor,
    classes: Tensor,
    *,
    logits: Tensor | None = None,
    create_graph: bool,
) -> Tensor:
    """Grad-CAM channel weights mean_hw(d logit_y / d A_c) from the head only.

    Args:
        model: the network whose head maps ``features`` to logits.
        features: [B, C, h, w] at the matched layer (part of the autograd graph when training).
        classes: [B, K] int64.
        logits: the head's output on ``features`` [B, num_classes], reused when K == 1 so the
            head runs once.
        create_graph: keep the graph of the weights (student); False for the teacher.

    Returns:
        [B, K, C].
    """
    batch, k = classes.shape
    area = features.shape[-2] * features.shape[-1]
    weight = linear_head_weight(model)
    if weight is not None:
        # Closed form for global-average-pool + linear heads: no backward pass at all.
        return weight[classes] / area
    with torch.enable_grad():
        if not features.requires_grad:
            features = features.detach().requires_grad_()
        if k == 1 and logits is not None:
            replicated, head_logits = features, logits
        else:
            replicated = features.repeat_interleave(k, dim=0)
            head_logits = forward_head(model, replicated)
        selected = head_logits.gather(1, classes.reshape(-1, 1)).sum()
        (gradients,) = torch.autograd.grad(selected, replicated, create_graph=create_graph)
    return gradients.mean(dim=(2, 3)).reshape(batch, k, -1)


def _collapsed_maps(
    model: nn.Module,
    features: Tensor,
    classes: Tensor,
    config: MatchingConfig,
    *,
    logits: Tensor | None,
    create_graph: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """[B, K, h, w] maps of ``config.kind`` (K = 1 for EWA).

    SWA, SSWA (with channels dropped) and Grad-CAM cos share one map: Grad-CAM at the matched
    layer, with the channel weights from the head only (:func:`sensitivity_weights`).
    """
    if config.kind == "ewa":
        # Squared in fp32 (a no-op at fp32): under fp16 autocast an activation past 256
        # would square to inf.
        return ewa_map(widen(features)).unsqueeze(1)
    weights = sensitivity_weights(
        model, features, classes, logits=logits, create_graph=create_graph
    )
    drop = None
    if config.kind == "sswa" and config.drop_p > 0.0:
        drop = channel_drop_mask(
            weights.shape,
            config.drop_p,
            device=weights.device,
            dtype=weights.dtype,
            generator=generator,
        )
    return swa_map(features, weights, drop_mask=drop)


@torch.no_grad()
def teacher_targets(
    teacher: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    config: MatchingConfig,
    *,
    generator: torch.Generator | None = None,
    outputs: tuple[Tensor, Tensor] | None = None,
) -> TeacherTargets:
    """Run the (frozen, eval-mode) teacher once: logits, matched features and maps.

    The body runs without autograd; SWA's weights differentiate the head only.

    Args:
        teacher: the uncompressed network, in eval mode.
        images: [B, 3, H, W].
        labels: [B, num_classes] multi-hot, or None unless ``classes == 'positives'``.
        config: the matching configuration.
        generator: random source for SSWA's drop mask.
        outputs: the teacher's matched-layer features [B, C, h, w] and logits [B, K] for
            ``images`` when already known (:class:`trainables.teacher_cache.TeacherCache`);
            the body is then not run at all.
    """
    if teacher.training:
        raise ValueError("teacher: must be in eval mode (call teacher.eval()); got train mode")
    if outputs is None:
        features = forward_features(teacher, images)
        logits = forward_head(teacher, features)
    else:
        features, logits = outputs
    classes, valid = select_classes(logits, labels, config)
    maps = None
    if config.kind != "none":
        maps = _collapsed_maps(
            teacher,
            features,
            classes,
            config,
            logits=None,
            create_graph=False,
            generator=generator,
        )
    return TeacherTargets(logits=logits, features=features, classes=classes, valid=valid, maps=maps)


def _unit_maps(student_maps: Tensor, teacher_maps: Tensor) -> tuple[Tensor, Tensor]:
    """Both maps flattened and scaled to unit L2 norm: [..., h, w] x [..., h, w] -> [..., h*w].

    A student map of another resolution is resized to the teacher's first (bilinear); the
    channel counts never matter, each network's map is collapsed over its own channels.
    Computed in fp32 whatever the maps' dtype (bf16, fp16 under autocast): in fp16 the eps
    below is 0, and the norm's gradient at an all-zero map would be inf. An all-zero map
    stays all zero (norm sqrt(eps), not 0: no NaN).
    """
    student_maps, teacher_maps = widen(student_maps), widen(teacher_maps)
    if student_maps.shape[-2:] != teacher_maps.shape[-2:]:
        lead = student_maps.shape[:-2]
        student_maps = F.interpolate(
            student_maps.reshape(-1, 1, *student_maps.shape[-2:]),
            size=teacher_maps.shape[-2:],
            mode="bilinear",
            align_corners=False,
        ).reshape(*lead, *teacher_maps.shape[-2:])
    s = student_maps.flatten(-2)
    t = teacher_maps.flatten(-2)
    # eps inside the norm keeps the gradient finite when a ReLU'd map is all zero.
    s = s / s.pow(2).sum(-1, keepdim=True).add(_EPS).sqrt()
    t = t / t.pow(2).sum(-1, keepdim=True).add(_EPS).sqrt()
    return s, t


def normalized_map_distance(student_maps: Tensor, teacher_maps: Tensor) -> Tensor:
    """|| M_s/||M_s|| - M_t/||M_t|| ||_2 per map: [..., h, w] x [..., h, w] -> [...].

    EWA's, SWA's and SSWA's distance, in [0, 2]; resizing and precision as
    :func:`_unit_maps`.
    """
    s, t = _unit_maps(student_maps, teacher_maps)
    # eps under the root keeps the gradient finite where the two maps are equal.
    return (s - t).pow(2).sum(-1).add(_EPS).sqrt()


def cosine_map_distance(student_maps: Tensor, teacher_maps: Tensor) -> Tensor:
    """1 - cos(M_s, M_t) per map: [..., h, w] x [..., h, w] -> [...], in [0, 2].

    The Grad-CAM cos distance (ECCV 2024); resizing and precision as :func:`_unit_maps`.
    Equal to half the square of :func:`normalized_map_distance` (up to eps), so near
    agreement its gradient is that distance times SWA's: it pulls less when the maps are
    close. An all-zero map has cos 0, so the distance is 1, finite, and no gradient flows to
    the other map (nothing to align with).
    """
    s, t = _unit_maps(student_maps, teacher_maps)
    return 1.0 - (s * t).sum(-1)


def matching_loss(
    student: nn.Module,
    student_features: Tensor,
    student_logits: Tensor,
    targets: TeacherTargets,
    config: MatchingConfig,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Attribution-matching loss (without beta): the map distance averaged over the batch.

    Args:
        student: the network being compressed (train mode as the caller sets it).
        student_features: [B, C_s, h, w] from :func:`forward_features` (with autograd).
        student_logits: [B, num_classes] = ``forward_head(student, student_features)``.
        targets: the teacher's :func:`teacher_targets` for the same images.
        config: the matching configuration (kind ``none`` gives a zero loss).
        generator: random source for SSWA's drop mask.

    Returns:
        A scalar; its gradient reaches the student's features and head, never the teacher.
    """
    if config.kind == "none" or targets.maps is None:
        return student_logits.new_zeros(())
    student_maps = _collapsed_maps(
        student,
        student_features,
        targets.classes,
        config,
        logits=student_logits,
        create_graph=True,
        generator=generator,
    )
    distance = cosine_map_distance if config.kind == "gradcam_cos" else normalized_map_distance
    distances = distance(student_maps, targets.maps)  # [B, K]
    if config.kind == "ewa":
        return distances.mean()
    valid = targets.valid.to(distances.dtype)
    # Mean over an image's matched classes keeps beta's scale independent of how many classes
    # are matched; images without any class (no positive label) do not count.
    count = valid.sum(dim=1)
    per_image = (distances * valid).sum(dim=1) / count.clamp(min=1)
    return per_image.sum() / (count > 0).sum().clamp(min=1)
