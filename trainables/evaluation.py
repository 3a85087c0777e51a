"""Evaluate a (compressed) network: task metrics, and its Grad-CAM maps against masks and teacher.

One pass over an evaluation loader gives the canonical metrics of docs/design.md#metric-names
and one row per image for the per-sample export (Parquet, PIEs):

Task metrics, over every image of the loader
    ``loss`` (mean task loss), multi-label: ``map``, ``map_samples``, ``f1`` (all in %);
    single-label: ``top1`` (in %).
Attribution metrics, over (image, class) *pairs* (the paper's protocol)
    A pair is a ground-truth positive class that the evaluated model predicts: sigmoid
    probability ``>= threshold`` (multi-label) or arg-max equal to the target (single-label).
    Its map is Grad-CAM at the matched layer (:func:`trainables.models.matched_layer`), or
    with ``grad_cam_layer="last_conv"`` at the last convolution's ReLU before pool5 (the
    official code's layer, :mod:`trainables.evaluation_protocol`: 14x14 for VGG16 at 227 px
    instead of 7x7), upsampled bilinearly to the image.

    * ``attr_auc``: mean ROC-AUC (in %) of the maps against the pair's ground-truth mask,
      pairs whose mask has no positive or no negative pixel skipped; ``point_acc``: pointing-
      game hit rate (in %) over the pairs whose mask is non-empty. Only when batches carry
      ``"masks"``.
    * ``attr_cos`` (cosine similarity, raw, in [0, 1] for ReLU'd maps) and ``attr_l2`` (L2
      distance of the L2-normalised maps, raw, in [0, sqrt(2)]): the teacher's Grad-CAM map of the
      same class against the student's, over all pairs (masks not needed). Only with a teacher.

    Grad-CAM is the default map; ``attribution_methods`` scores further methods' maps too
    (Integrated Gradients, LRP, EBP, RAP: :mod:`trainables.attribution_methods`), under the
    metric names of :func:`trainables.metric_names.method_metric`.

    An applicable metric whose pairs are all missing (e.g. a model that predicts nothing) is
    NaN, so that every epoch reports the same keys.

PIEs (pruning-identified exemplars), with a teacher
    ``pie_fraction``: the fraction of images whose predicted class set differs from the
    teacher's (the PIE paper's definition with one model on each side; see
    :mod:`analysis.pies` for modal labels over several).

Cost: per batch one forward pass of each network without autograd; Grad-CAM's channel weights
for all pairs of a batch come from one backward pass through the head only
(:func:`trainables.matching.sensitivity_weights`; none at all for ResNet's linear head).
Scores are accumulated on the CPU batch by batch, so memory does not grow with the pairs' maps.

Precision (an :class:`trainables.precision.Accelerator`): the networks' bodies, up to the
matched layer, run under its autocast; the features are taken to fp32 there, so the heads, the
Grad-CAM weights, the maps and every metric are computed in fp32.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from trainables.attribution import swa_map, upsample_maps
from trainables.evaluation_protocol import GradCamLayer, grad_cam_view, whole_model
from trainables.losses import task_loss
from trainables.matching import MatchingConfig, select_classes, sensitivity_weights
from trainables.metric_names import ATTRIBUTION_METHOD_NAMES, method_metric
from trainables.metrics import (
    f1_samples,
    map_cosine,
    map_l2,
    mean_average_precision,
    pointing_game,
    roc_auc,
    sample_average_precision,
    top1_accuracy,
)
from trainables.models import eval_mode, forward_features, forward_head
from trainables.precision import Accelerator

__all__ = ["PER_SAMPLE_COLUMNS", "Evaluation", "evaluate"]

#: Per-sample columns of :attr:`Evaluation.per_sample` and what they hold (one row per image).
PER_SAMPLE_COLUMNS: dict[str, str] = {
    "index": "int64: the sample's index in its data set (its position in the loader if absent)",
    "loss": "float64: the image's task loss",
    "correct": "bool: every label predicted right (single-label: arg-max equals the target)",
    "num_pairs": "int64: ground-truth positive classes the model predicts (the image's pairs)",
    "teacher_agree": "bool: the predicted class set equals the teacher's (with a teacher)",
    "teacher_correct": "bool: the teacher predicts every label right (with a teacher)",
    "attr_auc": "float64: mean ROC-AUC of the image's pairs in %, NaN without a scorable mask",
    "point_acc": "float64: pointing hits of the image's pairs in %, NaN without a mask",
    "attr_cos": "float64: mean teacher/student map cosine of the image's pairs, NaN if none",
    "attr_l2": "float64: mean teacher/student map L2 distance of its pairs, NaN if none",
    "predicted": "bool [N, num_classes]: the model's predicted class set",
    "teacher_predicted": "bool [N, num_classes]: the teacher's predicted class set",
}
"""Every attribution column also exists per further attribution method (``attr_auc_lrp``...)."""

_PAIRS = MatchingConfig(kind="swa", classes="positives")


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured.

    Attributes:
        metrics: canonical metric name (:data:`trainables.metric_names.METRICS`) -> value.
        per_sample: column name (:data:`PER_SAMPLE_COLUMNS`) -> numpy array [N] (the
            predicted class sets [N, num_classes]), one entry per evaluated image in loader
            order; the attribution and teacher columns are present exactly when the matching
            metrics are.
    """

    metrics: dict[str, float]
    per_sample: dict[str, npt.NDArray[Any]]


@dataclass
class _PairScores:
    """Per-pair scores of one batch, on the CPU: pair -> image row in the batch, and scores."""

    rows: Tensor  # int64 [P]
    auc: Tensor | None = None  # float64 [P], NaN where the mask is degenerate
    hit: Tensor | None = None  # float64 [P] 0/1, NaN where the mask is empty
    cos: Tensor | None = None  # float64 [P]
    l2: Tensor | None = None  # float64 [P]


class _Accumulator:
    """Per-batch results gathered on the CPU, concatenated once at the end."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Tensor]] = {}
        self.logits: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.pairs: dict[str, list[Tensor]] = {}

    def add(self, name: str, values: Tensor) -> None:
        self.columns.setdefault(name, []).append(values.detach().cpu())

    def add_pairs(self, name: str, values: Tensor) -> None:
        self.pairs.setdefault(name, []).append(values)

    def column(self, name: str) -> Tensor:
        return torch.cat(self.columns[name])

    def pair_values(self, name: str) -> Tensor:
        return torch.cat(self.pairs.get(name, [torch.empty(0, dtype=torch.float64)]))


def _predicted(logits: Tensor, *, multi_label: bool, threshold: float) -> Tensor:
    """Predicted class set [B, C] bool: sigmoid >= threshold, or the one-hot arg-max."""
    if multi_label:
        return torch.sigmoid(logits) >= threshold
    return nn.functional.one_hot(logits.argmax(dim=1), logits.shape[1]).bool()


def _per_sample_loss(logits: Tensor, labels: Tensor, *, multi_label: bool) -> Tensor:
    """:func:`task_loss` of each image on its own: [B, C] x [B, C] -> [B]."""

    def one(row_logits: Tensor, row_labels: Tensor) -> Tensor:
        return task_loss(row_logits[None], row_labels[None], multi_label=multi_label)

    losses: Tensor = torch.func.vmap(one)(logits, labels)
    return losses


def _pair_maps(model: nn.Module, features: Tensor, classes: Tensor, valid: Tensor) -> Tensor:
    """Grad-CAM maps of the valid pairs at the matched layer: [P, h, w], in ``valid``'s order.

    Args:
        model: the network whose head maps ``features`` [B, C, h, w] to logits.
        features: [B, C, h, w] at the matched layer, without autograd.
        classes: [B, K] int64 class of each (padded) pair.
        valid: [B, K] bool, False for padding.
    """
    weights = sensitivity_weights(model, features, classes, create_graph=False)  # [B, K, C]
    maps: Tensor = swa_map(features, weights.detach())  # [B, K, h, w]
    return maps[valid]


def _mean_by_row(values: Tensor, rows: Tensor, batch: int) -> Tensor:
    """Per-image mean of the non-NaN ``values`` [P] (image ``rows`` [P]): float64 [batch]."""
    defined = ~torch.isnan(values)
    sums = torch.zeros(batch, dtype=torch.float64).index_add_(
        0, rows[defined], values[defined].to(torch.float64)
    )
    counts = torch.bincount(rows[defined], minlength=batch).to(torch.float64)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, math.nan))


@dataclass(frozen=True)
class _BatchPairs:
    """The (image, class) pairs of one batch, and what each method's maps are made from.

    ``classes``/``valid`` [B, K] are the pairs padded per image; ``rows``/``targets`` [P] the
    image row and class of each valid pair, in the same order.
    """

    images: Tensor  # [B, 3, H, W]
    classes: Tensor  # [B, K] int64
    valid: Tensor  # [B, K] bool
    rows: Tensor  # [P] int64
    targets: Tensor  # [P] int64

    @classmethod
    def of(cls, images: Tensor, pairs: Tensor) -> _BatchPairs:
        """From the batch's pair matrix ``pairs`` [B, num_classes] bool (at least one True)."""
        as_scores = pairs.to(images.dtype)
        classes, valid = select_classes(as_scores, as_scores, _PAIRS)
        rows, slots = valid.nonzero(as_tuple=True)
        return cls(images, classes, valid, rows, classes[rows, slots])


def _method_maps(
    method: str, model: nn.Module, features: Tensor, pairs: _BatchPairs, size: tuple[int, int]
) -> Tensor:
    """``method``'s maps of every pair at resolution ``size``: [P, *size].

    Grad-CAM reuses the batch's matched-layer ``features`` (no second forward pass); the other
    methods run on each pair's image, ``len(images)`` pairs at a time so memory stays that of
    a batch.
    """
    if method == "grad_cam":
        return upsample_maps(_pair_maps(model, features, pairs.classes, pairs.valid), size)
    from trainables.attribution_methods import ATTRIBUTION_METHODS

    explain = ATTRIBUTION_METHODS[method]
    chunk = max(1, pairs.images.shape[0])
    maps = []
    with torch.enable_grad():
        for start in range(0, pairs.rows.numel(), chunk):
            rows = pairs.rows[start : start + chunk]
            targets = pairs.targets[start : start + chunk]
            # The whole network: a Grad-CAM view (a split VGG) is no model these methods read.
            maps.append(explain(whole_model(model), pairs.images[rows], targets).detach())
    out = torch.cat(maps)
    return out if tuple(out.shape[-2:]) == size else upsample_maps(out, size)


def _score_pairs(
    method: str,
    model: nn.Module,
    features: Tensor,
    pairs: _BatchPairs,
    *,
    masks: Tensor | None,
    teacher: nn.Module | None,
    teacher_features: Tensor | None,
) -> _PairScores:
    """``method``'s map of every pair of one batch against its mask and the teacher's map.

    Args:
        method: a name of :data:`trainables.metric_names.ATTRIBUTION_METHOD_NAMES`.
        model: the evaluated network.
        features: [B, C, h, w] its matched-layer features.
        pairs: the batch's (image, class) pairs.
        masks: [B, num_classes, H_m, W_m] bool ground-truth masks, or None; maps are compared
            at the masks' resolution.
        teacher: the teacher, or None.
        teacher_features: [B, C_t, h_t, w_t] the teacher's matched-layer features, or None.
    """
    scores = _PairScores(rows=pairs.rows.cpu())
    image_size = (pairs.images.shape[-2], pairs.images.shape[-1])
    student_maps = _method_maps(method, model, features, pairs, image_size)  # [P, H, W]
    if masks is not None:
        pair_masks = masks[pairs.rows, pairs.targets]  # [P, H_m, W_m]
        mask_size = (pair_masks.shape[-2], pair_masks.shape[-1])
        at_masks = (
            student_maps if mask_size == image_size else upsample_maps(student_maps, mask_size)
        )
        scores.auc = roc_auc(at_masks, pair_masks).cpu()
        hit = pointing_game(at_masks, pair_masks).to(torch.float64)
        empty = ~pair_masks.flatten(1).any(dim=1)
        scores.hit = hit.masked_fill(empty, math.nan).cpu()
    if teacher is not None and teacher_features is not None:
        teacher_maps = _method_maps(method, teacher, teacher_features, pairs, image_size)
        scores.cos = map_cosine(teacher_maps, student_maps).cpu()
        scores.l2 = map_l2(teacher_maps, student_maps).cpu()
    return scores


#: Pair score (:class:`_PairScores` field) -> the attribution metric it is averaged into.
_SCORE_METRICS: Final[dict[str, str]] = {
    "auc": "attr_auc",
    "hit": "point_acc",
    "cos": "attr_cos",
    "l2": "attr_l2",
}
#: Attribution metrics that are percentages.
_PERCENT_SCORES: Final = frozenset({"auc", "hit"})


def _score_names(*, masks: bool, teacher: bool) -> list[str]:
    return (["auc", "hit"] if masks else []) + (["cos", "l2"] if teacher else [])


def _record_pairs(
    acc: _Accumulator,
    method: str,
    scores: _PairScores | None,
    batch: int,
    *,
    masks: bool,
    teacher: bool,
) -> None:
    """Per-pair scores into the running lists, and their per-image means into the columns."""
    rows = scores.rows if scores is not None else torch.empty(0, dtype=torch.int64)
    for name in _score_names(masks=masks, teacher=teacher):
        values = getattr(scores, name) if scores is not None else None
        if values is None:
            values = torch.empty(0, dtype=torch.float64)
        key = method_metric(_SCORE_METRICS[name], method)
        acc.add_pairs(key, values)
        acc.add(f"pair_{key}", _mean_by_row(values, rows, batch))


def _nanmean(values: Tensor, scale: float = 1.0) -> float:
    """Mean of the non-NaN entries times ``scale``; NaN when there are none."""
    defined = values[~torch.isnan(values)]
    if defined.numel() == 0:
        return math.nan
    return float(defined.to(torch.float64).mean()) * scale


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    *,
    teacher: nn.Module | None = None,
    multi_label: bool = True,
    device: torch.device | str | None = None,
    threshold: float = 0.5,
    max_batches: int | None = None,
    attribution_methods: Sequence[str] = ("grad_cam",),
    accelerator: Accelerator | None = None,
    grad_cam_layer: GradCamLayer = "matched",
) -> Evaluation:
    """Evaluate ``model`` (and its attribution maps) on every batch of ``loader``.

    Both networks run in eval mode here; every submodule's previous train/eval flag is restored
    afterwards. Nothing builds an autograd graph except the attribution methods' own gradients
    (Grad-CAM's through the head only).

    Args:
        model: a torchvision VGG or ResNet from :func:`trainables.models.build_model` (or a
            compressed copy), already on ``device``.
        loader: batches as the default collate builds them from :class:`trainables.data.Sample`
            dicts: ``image`` [B, 3, H, W], ``labels`` [B, C] multi-hot (single-label: one-hot),
            optionally ``masks`` [B, C, H, W] bool and ``index`` [B].
        teacher: the uncompressed network on ``device``; enables ``attr_cos``/``attr_l2`` and
            the ``teacher_agree`` column.
        multi_label: sigmoid/BCE predictions (True) or softmax/arg-max (False).
        device: where the batches are moved to (the networks are not moved); default
            ``accelerator``'s device, else the CPU.
        threshold: probability at which a multi-label class counts as predicted (F1, pairs,
            ``correct``, ``teacher_agree``); single-label predictions are the arg-max.
        max_batches: evaluate only the first this many batches.
        attribution_methods: whose maps the attribution metrics score, names of
            :data:`trainables.metric_names.ATTRIBUTION_METHOD_NAMES`; Grad-CAM's metrics
            have the plain names (``attr_auc``), the others' the method's suffix
            (``attr_auc_lrp``, :func:`trainables.metric_names.method_metric`), in the metrics
            and the per-sample columns alike. Grad-CAM costs one head-only backward pass per
            batch; each other method a forward and backward pass of both networks per pair.
        accelerator: the forward passes' autocast and how batches are copied (default: fp32
            on ``device``, plain copies); when both are given, ``device`` must be its device.
        grad_cam_layer: where both networks' Grad-CAM maps are taken: ``"matched"`` (the
            matched layer, apc's protocol) or ``"last_conv"`` (the official code's,
            :func:`trainables.evaluation_protocol.grad_cam_layer_name`); logits and every
            task metric are the same under both.

    Returns:
        :class:`Evaluation` with the metrics described in the module docstring and one row per
        image in ``per_sample``.

    Raises:
        ValueError: ``threshold`` outside (0, 1), ``max_batches`` < 1, an unknown attribution
            method, an empty loader, or a ``device`` other than ``accelerator``'s; an unknown
            ``grad_cam_layer``, or ``"last_conv"`` for a quantized (split) model.
    """
    unknown = [m for m in attribution_methods if m not in ATTRIBUTION_METHOD_NAMES]
    if unknown:
        raise ValueError(
            f"attribution_methods: must be among {list(ATTRIBUTION_METHOD_NAMES)}, got {unknown}"
        )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: must be in (0, 1), got {threshold}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches: must be a positive integer or None, got {max_batches}")
    if accelerator is None:
        accelerator = Accelerator.plain("cpu" if device is None else device)
    elif device is not None and not accelerator.runs_on(device):
        raise ValueError(
            f"device: must be the accelerator's ({accelerator.device}) when both are given, "
            f"got {device}"
        )
    # Views share the networks' modules: eval_mode on the networks covers them.
    explained = grad_cam_view(model, layer=grad_cam_layer)
    explained_teacher = None if teacher is None else grad_cam_view(teacher, layer=grad_cam_layer)
    with eval_mode(model, teacher):
        acc, has_masks = _run(
            explained,
            loader,
            teacher=explained_teacher,
            multi_label=multi_label,
            accelerator=accelerator,
            threshold=threshold,
            max_batches=max_batches,
            methods=tuple(dict.fromkeys(attribution_methods)),
        )
    return _summarise(
        acc,
        has_masks=has_masks,
        teacher=teacher is not None,
        multi_label=multi_label,
        threshold=threshold,
        methods=tuple(dict.fromkeys(attribution_methods)),
    )


def _run(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    *,
    teacher: nn.Module | None,
    multi_label: bool,
    accelerator: Accelerator,
    threshold: float,
    max_batches: int | None,
    methods: tuple[str, ...],
) -> tuple[_Accumulator, bool]:
    """The batch loop: accumulate logits, labels, per-image columns and per-pair scores."""
    acc = _Accumulator()
    seen = 0
    has_masks: bool | None = None
    # islice: a DataLoader is not asked for (and does not load) a batch beyond max_batches.
    for number, batch in enumerate(itertools.islice(loader, max_batches)):
        images: Tensor = accelerator.images(batch["image"])
        labels: Tensor = accelerator.tensor(batch["labels"]).float()
        masks: Tensor | None = batch.get("masks")
        if has_masks is None:
            has_masks = masks is not None
        elif has_masks != (masks is not None):
            raise ValueError(
                f"loader: batch {number} {'lacks' if has_masks else 'has'} 'masks', unlike the "
                "batches before it; every batch must carry masks or none"
            )
        if masks is not None:
            masks = accelerator.tensor(masks).bool()
        size = images.shape[0]
        index = batch.get("index")
        indices = (
            torch.as_tensor(index, dtype=torch.int64)
            if index is not None
            else torch.arange(seen, seen + size, dtype=torch.int64)
        )
        seen += size

        # The head and all that is measured in fp32 (a no-op at fp32): the head is a small
        # part of the forward pass (under 1% of VGG16's at 224 px), and bf16 logits (3
        # significant digits) would tie scores that AP and ROC-AUC rank.
        with accelerator.autocast():
            features = forward_features(model, images)
        features = accelerator.widen(features)
        logits = forward_head(model, features)
        positive = labels > 0.5
        predicted = _predicted(logits, multi_label=multi_label, threshold=threshold)
        acc.logits.append(logits.cpu())
        acc.labels.append(labels.cpu())
        acc.add("index", indices)
        acc.add("loss", _per_sample_loss(logits, labels.to(logits.dtype), multi_label=multi_label))
        acc.add("correct", (predicted == positive).all(dim=1))
        acc.add("predicted", predicted)

        teacher_features = None
        if teacher is not None:
            with accelerator.autocast():
                teacher_features = forward_features(teacher, images)
            teacher_features = accelerator.widen(teacher_features)
            teacher_logits = forward_head(teacher, teacher_features)
            teacher_predicted = _predicted(
                teacher_logits, multi_label=multi_label, threshold=threshold
            )
            acc.add("teacher_agree", (predicted == teacher_predicted).all(dim=1))
            acc.add("teacher_predicted", teacher_predicted)
            acc.add("teacher_correct", (teacher_predicted == positive).all(dim=1))

        pairs = positive & predicted
        acc.add("num_pairs", pairs.sum(dim=1, dtype=torch.int64))
        scorable = (masks is not None or teacher is not None) and bool(pairs.any())
        batch_pairs = _BatchPairs.of(images, pairs) if scorable else None
        for method in methods:
            scores = None
            if batch_pairs is not None:
                scores = _score_pairs(
                    method,
                    model,
                    features,
                    batch_pairs,
                    masks=masks,
                    teacher=teacher,
                    teacher_features=teacher_features,
                )
            _record_pairs(
                acc, method, scores, size, masks=masks is not None, teacher=teacher is not None
            )
    if has_masks is None:
        raise ValueError("loader: yielded no batch to evaluate")
    return acc, has_masks


def _summarise(
    acc: _Accumulator,
    *,
    has_masks: bool,
    teacher: bool,
    multi_label: bool,
    threshold: float,
    methods: tuple[str, ...],
) -> Evaluation:
    """Whole-loader metrics and per-sample columns from the accumulated batches."""
    logits = torch.cat(acc.logits)
    labels = torch.cat(acc.labels)
    losses = acc.column("loss")
    metrics: dict[str, float] = {"loss": float(losses.to(torch.float64).mean())}
    if multi_label:
        metrics["map"] = mean_average_precision(logits, labels > 0.5)
        metrics["map_samples"] = sample_average_precision(logits, labels > 0.5)
        metrics["f1"] = f1_samples(torch.sigmoid(logits), labels > 0.5, threshold=threshold)
    else:
        metrics["top1"] = top1_accuracy(logits, labels.argmax(dim=1))
    per_sample: dict[str, npt.NDArray[Any]] = {
        "index": acc.column("index").numpy(),
        "loss": losses.to(torch.float64).numpy(),
        "correct": acc.column("correct").numpy(),
        "num_pairs": acc.column("num_pairs").numpy(),
    }
    if teacher:
        agree = acc.column("teacher_agree")
        metrics["pie_fraction"] = 1.0 - float(agree.to(torch.float64).mean())
        per_sample["teacher_agree"] = agree.numpy()
        per_sample["teacher_correct"] = acc.column("teacher_correct").numpy()
    for method in methods:
        for score in _score_names(masks=has_masks, teacher=teacher):
            key = method_metric(_SCORE_METRICS[score], method)
            scale = 100.0 if score in _PERCENT_SCORES else 1.0
            metrics[key] = _nanmean(acc.pair_values(key), scale)
            per_sample[key] = (acc.column(f"pair_{key}") * scale).numpy()
    per_sample["predicted"] = acc.column("predicted").numpy()
    if teacher:
        per_sample["teacher_predicted"] = acc.column("teacher_predicted").numpy()
    return Evaluation(metrics=metrics, per_sample={k: np.asarray(v) for k, v in per_sample.items()})
