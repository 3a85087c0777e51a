"""Evaluation metrics shared by the trainables: attribution-map quality and task accuracy.

Attribution maps against ground-truth masks
    :func:`roc_auc` (exact ROC-AUC per map, ties scored like ``sklearn.metrics.roc_auc_score``)
    and :func:`pointing_game` (is the first maximal pixel inside the mask?).
Teacher maps against student maps
    :func:`map_cosine` and :func:`map_l2` (the distance the matching loss minimises).
Task accuracy
    :func:`mean_average_precision` (VOC per-class mAP), :func:`sample_average_precision` (the
    paper's per-image AP), :func:`f1_samples` and :func:`top1_accuracy`.

Conventions
    * Per-map metrics return a ``[B]`` tensor on the input's device; aggregated metrics return a
      Python ``float`` in percent (``roc_auc`` stays a raw AUC in ``[0, 1]`` per map, the caller
      aggregates it into ``attr_auc`` in percent).
    * Metrics are evaluation-only: inputs are detached, nothing here builds an autograd graph.
    * Everything is vectorised in torch and device-agnostic (CPU or CUDA); no per-sample Python
      loops and no round trips through numpy.
    * Scores and maps containing NaN are rejected with ``ValueError`` (NaN has no rank, and
      sklearn rejects them too); infinities are ordinary, well-ordered scores.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "f1_samples",
    "map_cosine",
    "map_l2",
    "mean_average_precision",
    "pointing_game",
    "roc_auc",
    "sample_average_precision",
    "top1_accuracy",
]

# Same eps as torch.nn.functional.cosine_similarity, so map_cosine agrees with it.
COSINE_EPS = 1e-8
# Same eps as torch.nn.functional.normalize: a zero map normalises to the zero vector, not NaN.
NORMALIZE_EPS = 1e-12

# Maps per vectorised step in roc_auc. Every torch op is one parallel region whose threads
# meet at a barrier; on a CPU shared with other processes a descheduled thread stalls each
# barrier, so too many small steps are fragile (measured on 2 contended cores at 227 x 227:
# 32 maps per step ran ~2x slower than 64), while very large steps fall out of cache (256 is
# ~1.8x slower than 64 on an idle machine). 64 maps at 227 x 227 peak near 100 MB.
_DEFAULT_CHUNK = 64


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _require_tensor(x: object, name: str, fn: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _require_same_device(a: Tensor, b: Tensor, names: tuple[str, str], fn: str) -> None:
    if a.device != b.device:
        raise ValueError(
            f"{fn}: {names[0]} and {names[1]} must be on the same device; "
            f"got {a.device} and {b.device}"
        )


def _require_real(x: Tensor, name: str, fn: str) -> Tensor:
    """Return ``x`` as a real (sortable) tensor; bool becomes uint8, complex is refused."""
    if x.is_complex():
        raise TypeError(f"{fn}: {name} must be real-valued, got {x.dtype}")
    if x.dtype == torch.bool:
        return x.to(torch.uint8)
    return x


def _require_no_nan(x: Tensor, name: str, fn: str) -> None:
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(f"{fn}: {name} contains NaN; every score must be comparable")


def _as_binary(x: Tensor, name: str, fn: str) -> Tensor:
    """Return ``x`` as a bool tensor; non-bool inputs must hold only 0 and 1."""
    if x.dtype == torch.bool:
        return x
    if x.is_complex():
        raise TypeError(f"{fn}: {name} must be boolean or hold only 0/1, got {x.dtype}")
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{fn}: {name} must be boolean or hold only the values 0 and 1")
    return x != 0


def _require_maps_and_masks(maps: object, masks: object, fn: str) -> tuple[Tensor, Tensor]:
    maps_t = _require_tensor(maps, "maps", fn)
    masks_t = _require_tensor(masks, "masks", fn)
    if maps_t.dim() != 3 or maps_t.shape != masks_t.shape:
        raise ValueError(
            f"{fn}: maps and masks must both be [B, H, W] with the same shape; "
            f"got maps {tuple(maps_t.shape)} and masks {tuple(masks_t.shape)}"
        )
    _require_same_device(maps_t, masks_t, ("maps", "masks"), fn)
    maps_t = _require_real(maps_t.detach(), "maps", fn)
    _require_no_nan(maps_t, "maps", fn)
    return maps_t, _as_binary(masks_t.detach(), "masks", fn)


def _require_scores_and_labels(
    scores: object, labels: object, fn: str, names: tuple[str, str] = ("scores", "labels")
) -> tuple[Tensor, Tensor]:
    scores_t = _require_tensor(scores, names[0], fn)
    labels_t = _require_tensor(labels, names[1], fn)
    if scores_t.dim() != 2 or scores_t.shape != labels_t.shape:
        raise ValueError(
            f"{fn}: {names[0]} and {names[1]} must both be [N, C] with the same shape; "
            f"got {names[0]} {tuple(scores_t.shape)} and {names[1]} {tuple(labels_t.shape)}"
        )
    _require_same_device(scores_t, labels_t, names, fn)
    scores_t = _require_real(scores_t.detach(), names[0], fn)
    _require_no_nan(scores_t, names[0], fn)
    return scores_t, _as_binary(labels_t.detach(), names[1], fn)


def _require_pair(a: object, b: object, fn: str) -> tuple[Tensor, Tensor]:
    a_t = _require_tensor(a, "a", fn)
    b_t = _require_tensor(b, "b", fn)
    if a_t.dim() < 1 or a_t.shape != b_t.shape:
        raise ValueError(
            f"{fn}: a and b must both be [B, ...] with the same shape; "
            f"got a {tuple(a_t.shape)} and b {tuple(b_t.shape)}"
        )
    _require_same_device(a_t, b_t, ("a", "b"), fn)
    a_t = _require_real(a_t.detach(), "a", fn)
    b_t = _require_real(b_t.detach(), "b", fn)
    # float64 throughout: these are evaluation numbers, and a [B, 227*227] float64 copy is cheap.
    flat = (a_t.shape[0], math.prod(a_t.shape[1:]))
    return a_t.reshape(flat).to(torch.float64), b_t.reshape(flat).to(torch.float64)


# --------------------------------------------------------------------------------------------
# attribution maps against masks
# --------------------------------------------------------------------------------------------


_PACKABLE_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_PACKABLE_INTS = (torch.int8, torch.uint8, torch.int16, torch.int32)


def _order_key(values: Tensor) -> Tensor | None:
    """An int32 tensor ordered exactly like ``values`` [c, n], or None if there is none.

    Floats of at most 32 bits are reinterpreted as their IEEE-754 bit patterns with the
    negative half flipped, which orders them like the floats themselves (NaN is excluded by the
    caller). Integers of at most 32 bits are their own key.
    """
    if values.dtype in _PACKABLE_FLOATS:
        # ``+ 0.0`` turns -0.0 into +0.0: they compare equal, so they must tie, but their bit
        # patterns differ. The addition also gives a fresh tensor that is safe to reinterpret.
        bits = (values.to(torch.float32) + 0.0).view(torch.int32)
        return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    if values.dtype in _PACKABLE_INTS:
        return values.to(torch.int32)
    return None


def _sorted_packed_keys(values: Tensor, positive: Tensor) -> Tensor:
    """Rows of ``2 * rank_key + label``, each sorted ascending; int32 or int64 [c, n].

    ``rank_key`` is any integer ordered like ``values`` [c, n] (equal values, equal keys) and
    ``label`` is ``positive`` [c, n] as 0/1. Consequences the caller relies on: neighbours hold
    the same value iff their keys differ only in bit 0, and inside a tie group every negative
    precedes every positive.
    """
    order_key = _order_key(values)
    if order_key is None:
        # 64-bit values leave no spare bit for the label. Sort them, number their tie groups
        # per row (dense ranks, < n) and sort again by dense rank with the label packed in.
        sorted_values, order = torch.sort(values, dim=1, stable=True)
        label = torch.gather(positive, 1, order).to(torch.int64)
        del order
        new_value = torch.ones_like(sorted_values, dtype=torch.bool)
        torch.ne(sorted_values[:, 1:], sorted_values[:, :-1], out=new_value[:, 1:])
        dense_rank = torch.cumsum(new_value, dim=1)
        return torch.sort(dense_rank * 2 + label, dim=1, stable=True).values

    # One sort of the packed key orders the values and brings the labels along, with no
    # gather. When the key range allows it the packed key stays int32 (sorting 32-bit keys is
    # markedly faster than sorting float32 values with their NaN-aware comparator); otherwise
    # it widens to int64. Stability is irrelevant here; torch's stable CPU sort is just faster.
    low, high = (int(t) for t in torch.aminmax(order_key))
    if high - low < 2**31:
        # (key - low) lies in [0, 2**31); re-centring by 2**30 before doubling keeps every
        # intermediate inside int32.
        packed = (order_key - low - 2**30) * 2 + positive.to(torch.int32)
    else:
        packed = (order_key.to(torch.int64) - low) * 2 + positive.to(torch.int64)
    del order_key
    return torch.sort(packed, dim=1, stable=True).values


def _roc_auc_rows(values: Tensor, positive: Tensor) -> Tensor:
    """Exact ROC-AUC of each row of ``values`` [c, n] against ``positive`` [c, n] (bool).

    Returns float64 [c]; NaN for rows without a positive or without a negative.
    """
    rows, n = values.shape
    device = values.device
    if n == 0:
        return torch.full((rows,), math.nan, dtype=torch.float64, device=device)

    # One sort per row is the whole cost; everything after it is a few linear scans.
    keys = _sorted_packed_keys(values, positive)
    label = keys & 1
    n_pos = label.sum(dim=1, dtype=torch.int64)

    # Mann-Whitney U with midranks, doubled so it stays an exact integer. Negatives precede
    # positives inside a tie group, so the positive at sorted position j (the k-th positive,
    # k from 0) has exactly j - k negatives before it: all negatives with a smaller value and
    # all with an equal one. Summed over positives that is
    #     U_upper = sum_pos j - P (P - 1) / 2,
    # which scores every tied (positive, negative) pair 1 instead of the 1/2 that the average
    # rank gives it (and sklearn's trapezoid), so 2 U = 2 U_upper - T with T the tied pairs.
    positions = torch.arange(n, dtype=keys.dtype, device=device)
    position_sum = (label * positions).sum(dim=1, dtype=torch.int64)
    doubled_u = 2 * position_sum - n_pos * (n_pos - 1)

    # T = sum over tie groups of positives * negatives; only mixed groups contribute, and each
    # has exactly one negative -> positive step, where neighbouring keys differ in bit 0 only.
    step = torch.bitwise_xor(keys[:, 1:], keys[:, :-1])
    mixed = torch.nonzero((step == 1).view(-1)).squeeze(1)
    if mixed.numel() > 0:
        # Flat positions in the [c, n] layout; column 0 always opens a group, so no group
        # spans two rows.
        row = torch.div(mixed, n - 1, rounding_mode="floor")
        first_pos = mixed + row + 1  # the step sits between columns j - 1 and j
        new_value = torch.ones((rows, n), dtype=torch.bool, device=device)
        torch.ne(step >> 1, 0, out=new_value[:, 1:])
        starts = torch.nonzero(new_value.view(-1)).squeeze(1)
        group = torch.searchsorted(starts, first_pos, right=True) - 1
        group_start = starts[group]
        group_end = torch.cat([starts, starts.new_full((1,), rows * n)])[group + 1]
        tied = (first_pos - group_start) * (group_end - first_pos)
        doubled_u.index_add_(0, row, -tied)

    # AUC = U / (P N): exact integers up to here (< 2**53 for any realistic map), then one
    # float64 division, so no float32 rounding reaches the numerator or the denominator.
    denominator = 2 * n_pos * (n - n_pos)
    auc = doubled_u.to(torch.float64) / denominator.clamp_min(1).to(torch.float64)
    return torch.where(denominator > 0, auc, torch.full_like(auc, math.nan))


def roc_auc(maps: Tensor, masks: Tensor, *, chunk_size: int = _DEFAULT_CHUNK) -> Tensor:
    """Exact ROC-AUC of each attribution map against its ground-truth mask.

    Args:
        maps: real-valued maps, [B, H, W]. Dtypes of at most 32 bits (float32, float16,
            bfloat16, int32, ...) are ranked with one int32 sort per map and never converted
            to float64; float64 and int64 maps take an exact two-sort path.
        masks: boolean masks (or 0/1 values), [B, H, W], same shape and device as ``maps``.
        chunk_size: maps processed per vectorised step; peak extra memory is about
            ``32 * chunk_size * H * W`` bytes. Results do not depend on it.

    Returns:
        float64 [B] on ``maps``' device: the area under the ROC curve of map scores against
        mask labels, ties scored like ``sklearn.metrics.roc_auc_score`` (tied pixels get their
        average rank, i.e. Mann-Whitney U with midranks). NaN where a mask has no positive or
        no negative pixel (sklearn raises there instead). On CUDA each chunk synchronises
        with the host a few times (key range, group boundaries).

    Raises:
        ValueError: shapes differ or are not [B, H, W], devices differ, maps contain NaN,
            masks are not binary, or ``chunk_size`` < 1.
    """
    fn = "roc_auc"
    maps_t, masks_t = _require_maps_and_masks(maps, masks, fn)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be an int >= 1, got {chunk_size!r}")
    batch, height, width = maps_t.shape
    flat_maps = maps_t.reshape(batch, height * width)
    flat_masks = masks_t.reshape(batch, height * width)
    parts = [
        _roc_auc_rows(flat_maps[i : i + chunk_size], flat_masks[i : i + chunk_size])
        for i in range(0, batch, chunk_size)
    ]
    if not parts:
        return torch.empty(0, dtype=torch.float64, device=maps_t.device)
    return torch.cat(parts)


def pointing_game(maps: Tensor, masks: Tensor, *, tolerance: int = 0) -> Tensor:
    """Pointing-game hit per map: does the map's first maximal pixel fall in the mask?

    The maximal pixel is the first one in row-major order (``torch.argmax`` over the flattened
    map, documented to return the first occurrence of the maximum; an all-zero map therefore
    points at pixel (0, 0)). With ``tolerance`` t > 0 it is a hit when any mask pixel lies
    within Chebyshev distance t of it, i.e. inside the (2t+1) x (2t+1) square around it,
    clipped to the image -- the same as dilating the mask with a square kernel of side 2t+1.

    Args:
        maps: real-valued maps, [B, H, W].
        masks: boolean masks (or 0/1 values), [B, H, W], same shape and device as ``maps``.
        tolerance: neighbourhood radius in pixels, >= 0.

    Returns:
        bool [B] on ``maps``' device.
    """
    fn = "pointing_game"
    maps_t, masks_t = _require_maps_and_masks(maps, masks, fn)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"{fn}: tolerance must be an int >= 0, got {tolerance!r}")
    batch, height, width = maps_t.shape
    if batch == 0:
        return torch.empty(0, dtype=torch.bool, device=maps_t.device)
    if height * width == 0:
        return torch.zeros(batch, dtype=torch.bool, device=maps_t.device)
    peak = torch.argmax(maps_t.reshape(batch, height * width), dim=1)  # [B], first maximum
    if tolerance == 0:
        return torch.gather(masks_t.reshape(batch, height * width), 1, peak[:, None]).squeeze(1)

    # Only one window per map matters, so an integral image (O(H * W), independent of t)
    # beats dilating the whole mask with a (2t+1)^2 kernel.
    integral = torch.zeros((batch, height + 1, width + 1), dtype=torch.int32, device=maps_t.device)
    integral[:, 1:, 1:] = (
        masks_t.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    )
    y = torch.div(peak, width, rounding_mode="floor")
    x = peak - y * width
    top = (y - tolerance).clamp_min(0)
    bottom = (y + tolerance + 1).clamp_max(height)
    left = (x - tolerance).clamp_min(0)
    right = (x + tolerance + 1).clamp_max(width)
    flat = integral.reshape(batch, -1)
    stride = width + 1

    def corner(r: Tensor, c: Tensor) -> Tensor:
        return torch.gather(flat, 1, (r * stride + c)[:, None]).squeeze(1)

    window = corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left)
    return window > 0


# --------------------------------------------------------------------------------------------
# teacher maps against student maps
# --------------------------------------------------------------------------------------------


def map_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of each pair of flattened maps.

    Args:
        a: maps, [B, ...] (any trailing dims, flattened per sample).
        b: maps, same shape and device as ``a``.

    Returns:
        float64 [B]: ``<a, b> / (max(|a|, eps) * max(|b|, eps))`` with eps = 1e-8, exactly the
        formula of ``torch.nn.functional.cosine_similarity``; a zero map scores 0, not NaN.
    """
    a64, b64 = _require_pair(a, b, "map_cosine")
    norm_a: Tensor = torch.linalg.vector_norm(a64, dim=1).clamp_min(COSINE_EPS)
    norm_b: Tensor = torch.linalg.vector_norm(b64, dim=1).clamp_min(COSINE_EPS)
    return (a64 * b64).sum(dim=1) / (norm_a * norm_b)


def map_l2(a: Tensor, b: Tensor) -> Tensor:
    """L2 distance between the per-sample L2-normalised flattened maps.

    Args:
        a: maps, [B, ...] (any trailing dims, flattened per sample).
        b: maps, same shape and device as ``a``.

    Returns:
        float64 [B] in [0, 2]: ``| a / max(|a|, eps) - b / max(|b|, eps) |`` with eps = 1e-12
        (as ``torch.nn.functional.normalize``). A zero map normalises to the zero vector, so
        it is at distance 1 from any non-zero map and 0 from another zero map, never NaN.
    """
    a64, b64 = _require_pair(a, b, "map_l2")
    a_unit = a64 / torch.linalg.vector_norm(a64, dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)
    b_unit = b64 / torch.linalg.vector_norm(b64, dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)
    distance: Tensor = torch.linalg.vector_norm(a_unit - b_unit, dim=1)
    return distance


# --------------------------------------------------------------------------------------------
# task accuracy
# --------------------------------------------------------------------------------------------


def _average_precision_rows(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision of each row of ``scores`` [K, M] against ``labels`` [K, M] (bool).

    The definition of ``sklearn.metrics.average_precision_score``: thresholds at the distinct
    score values, AP = sum_k (R_k - R_{k-1}) P_k, no interpolation. Returns float64 [K]; NaN
    for rows without a positive label.
    """
    rows, items = scores.shape
    device = scores.device
    if items == 0:
        return torch.full((rows,), math.nan, dtype=torch.float64, device=device)
    sorted_scores, order = torch.sort(scores, dim=1, descending=True)
    hits = torch.gather(labels, 1, order).to(torch.int64)

    # Each tie group is one threshold: every item in it is scored with the precision at the
    # group's last position. A positive adds 1/P to recall exactly at its group's threshold, so
    # AP = (1/P) * sum over positives of the precision at the end of their group.
    is_end = torch.empty((rows, items), dtype=torch.bool, device=device)
    is_end[:, -1] = True
    torch.ne(sorted_scores[:, :-1], sorted_scores[:, 1:], out=is_end[:, :-1])
    position = torch.arange(items, device=device).expand(rows, items)
    end_marker = torch.where(is_end, position, torch.full_like(position, items))
    group_end = torch.cummin(end_marker.flip(1), dim=1).values.flip(1)

    true_pos = torch.cumsum(hits, dim=1)
    precision = torch.gather(true_pos, 1, group_end).to(torch.float64) / (group_end + 1).to(
        torch.float64
    )
    n_pos = true_pos[:, -1].to(torch.float64)
    # 0 / 0 -> NaN marks rows without a positive, which every caller excludes.
    return (precision * hits).sum(dim=1) / n_pos


def _nanmean_percent(values: Tensor) -> float:
    defined = values[~torch.isnan(values)]
    if defined.numel() == 0:
        return math.nan
    return float(defined.mean()) * 100.0


def mean_average_precision(scores: Tensor, labels: Tensor) -> float:
    """VOC-style mAP: per-class average precision averaged over classes, in percent.

    Args:
        scores: real-valued scores (logits or probabilities), [N, C].
        labels: binary ground truth, [N, C] (bool or 0/1).

    Returns:
        Mean over the classes with at least one positive of sklearn's
        ``average_precision_score`` for that class, times 100. NaN if no class has a positive.
    """
    scores_t, labels_t = _require_scores_and_labels(scores, labels, "mean_average_precision")
    return _nanmean_percent(_average_precision_rows(scores_t.t(), labels_t.t()))


def sample_average_precision(scores: Tensor, labels: Tensor) -> float:
    """The paper's per-image AP: AP of each sample over the classes, averaged, in percent.

    Args:
        scores: real-valued scores (logits or probabilities), [N, C].
        labels: binary ground truth, [N, C] (bool or 0/1).

    Returns:
        Mean over the samples with at least one positive label of the average precision of
        that row's scores against its labels, times 100 -- equal to sklearn's
        ``average_precision_score(labels, scores, average="samples")`` on those rows. NaN if no
        sample has a positive label.
    """
    scores_t, labels_t = _require_scores_and_labels(scores, labels, "sample_average_precision")
    return _nanmean_percent(_average_precision_rows(scores_t, labels_t))


def f1_samples(probabilities: Tensor, labels: Tensor, *, threshold: float = 0.5) -> float:
    """Sample-averaged F1 of the thresholded predictions, in percent.

    A class is predicted when ``probability >= threshold``. Each row scores
    ``2 TP / (2 TP + FP + FN)``; a row with no positive label and no predicted positive (F1
    undefined) scores 1.0, a correct empty prediction. This equals
    ``sklearn.metrics.f1_score(labels, preds, average="samples", zero_division=1.0)``.

    Args:
        probabilities: [N, C] real-valued (typically sigmoid outputs).
        labels: binary ground truth, [N, C] (bool or 0/1).
        threshold: decision threshold.

    Returns:
        Mean F1 over the N samples times 100; NaN when N == 0.
    """
    probs_t, labels_t = _require_scores_and_labels(
        probabilities, labels, "f1_samples", names=("probabilities", "labels")
    )
    if probs_t.shape[0] == 0:
        return math.nan
    predicted = probs_t >= threshold
    true_pos = (predicted & labels_t).sum(dim=1)
    errors = (predicted ^ labels_t).sum(dim=1)  # FP + FN
    denominator = 2 * true_pos + errors
    f1 = torch.where(
        denominator > 0,
        (2 * true_pos).to(torch.float64) / denominator.clamp_min(1).to(torch.float64),
        torch.ones_like(denominator, dtype=torch.float64),
    )
    return float(f1.mean()) * 100.0


def top1_accuracy(logits: Tensor, targets: Tensor) -> float:
    """Single-label top-1 accuracy, in percent.

    Args:
        logits: [N, C] real-valued class scores; ties go to the first maximal class.
        targets: [N] integer class indices in [0, C).

    Returns:
        Percentage of rows whose arg-max class equals the target; NaN when N == 0.
    """
    fn = "top1_accuracy"
    logits_t = _require_tensor(logits, "logits", fn)
    targets_t = _require_tensor(targets, "targets", fn)
    if logits_t.dim() != 2 or targets_t.dim() != 1 or logits_t.shape[0] != targets_t.shape[0]:
        raise ValueError(
            f"{fn}: logits must be [N, C] and targets [N] with the same N; "
            f"got logits {tuple(logits_t.shape)} and targets {tuple(targets_t.shape)}"
        )
    _require_same_device(logits_t, targets_t, ("logits", "targets"), fn)
    if targets_t.is_floating_point() or targets_t.is_complex() or targets_t.dtype == torch.bool:
        raise TypeError(f"{fn}: targets must hold integer class indices, got {targets_t.dtype}")
    logits_t = _require_real(logits_t.detach(), "logits", fn)
    _require_no_nan(logits_t, "logits", fn)
    n, classes = logits_t.shape
    if n == 0:
        return math.nan
    if bool(((targets_t < 0) | (targets_t >= classes)).any()):
        raise ValueError(f"{fn}: targets must lie in [0, {classes}) for {classes} classes")
    correct = torch.argmax(logits_t, dim=1) == targets_t.detach().to(torch.int64)
    return float(correct.to(torch.float64).mean()) * 100.0
