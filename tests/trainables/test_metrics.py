"""trainables.metrics against independent references (sklearn, numpy, brute-force loops)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

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

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def sklearn_auc(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per-map sklearn ROC-AUC; NaN where sklearn refuses (one class only)."""
    out = np.full(maps.shape[0], np.nan)
    for i in range(maps.shape[0]):
        labels = masks[i].numpy().ravel().astype(bool)
        scores = maps[i].double().numpy().ravel()
        if labels.any() and not labels.all():
            out[i] = roc_auc_score(labels, scores)
    return out


def assert_auc_matches(ours: torch.Tensor, reference: np.ndarray, atol: float) -> None:
    assert ours.dtype == torch.float64
    got = ours.numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(reference))
    finite = ~np.isnan(reference)
    np.testing.assert_allclose(got[finite], reference[finite], rtol=0.0, atol=atol)


def random_masks(rng: np.random.Generator, batch: int, h: int, w: int) -> torch.Tensor:
    """Masks of varied density, including an empty, a full and a single-pixel mask."""
    density = rng.uniform(0.05, 0.95, size=(batch, 1, 1))
    masks = rng.random((batch, h, w)) < density
    masks[0] = False
    masks[1] = True
    masks[2] = False
    masks[2, h // 2, w // 3] = True
    return torch.from_numpy(masks)


def make_maps(kind: str, rng: np.random.Generator, batch: int, h: int, w: int) -> torch.Tensor:
    shape = (batch, h, w)
    if kind == "continuous_f32":
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    if kind == "levels3_f32":
        return torch.from_numpy(rng.integers(0, 3, shape).astype(np.float32) * 0.37)
    if kind == "levels5_f32":
        return torch.from_numpy(rng.integers(0, 5, shape).astype(np.float32) - 2.0)
    if kind == "integer_i64":
        return torch.from_numpy(rng.integers(-3, 4, shape).astype(np.int64))
    if kind == "integer_i32":
        return torch.from_numpy(rng.integers(0, 4, shape).astype(np.int32))
    if kind == "uint8":
        return torch.from_numpy(rng.integers(0, 3, shape).astype(np.uint8))
    if kind == "constant":
        return torch.full(shape, 0.25, dtype=torch.float32)
    if kind == "float64_ties":
        return torch.from_numpy(np.round(rng.standard_normal(shape), 1))
    if kind == "float16":
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float16))
    if kind == "signed_zeros":
        # -0.0 and +0.0 compare equal, so they must tie (their bit patterns differ).
        values = rng.choice(np.array([-0.0, 0.0, 1.5, -1.5], dtype=np.float32), size=shape)
        return torch.from_numpy(values)
    if kind == "huge_range_f32":
        # Both signs at extreme magnitudes: the packed int32 key no longer fits.
        values = rng.choice(np.array([-3e38, -1e-30, 0.0, 1e-38, 2e37, 3e38], np.float32), shape)
        return torch.from_numpy(values)
    if kind == "infinities":
        values = rng.choice(np.array([-np.inf, -1.0, 0.0, 1.0, np.inf], np.float32), shape)
        return torch.from_numpy(values)
    raise AssertionError(kind)


MAP_KINDS = [
    "continuous_f32",
    "levels3_f32",
    "levels5_f32",
    "integer_i64",
    "integer_i32",
    "uint8",
    "constant",
    "float64_ties",
    "float16",
    "signed_zeros",
    "huge_range_f32",
]


def gradcam_like(batch: int, size: int, seed: int) -> torch.Tensor:
    """Float32 maps upsampled from 7x7 ReLU'd noise: zero plateaus and smooth ramps."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.relu(torch.randn(batch, 1, 7, 7, generator=gen))
    maps = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    maps[-1] = torch.round(maps[-1] * 2.0)  # heavy exact ties
    return maps.contiguous()


# --------------------------------------------------------------------------------------------
# roc_auc
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MAP_KINDS)
@pytest.mark.parametrize("shape", [(10, 6, 7), (6, 1, 13), (5, 16, 16)])
def test_roc_auc_matches_sklearn_with_heavy_ties(kind: str, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng([MAP_KINDS.index(kind), *shape])
    batch, h, w = shape
    maps = make_maps(kind, rng, batch, h, w)
    masks = random_masks(rng, batch, h, w)
    assert_auc_matches(roc_auc(maps, masks), sklearn_auc(maps, masks), atol=1e-12)


def test_roc_auc_with_infinite_scores_ranks_them() -> None:
    rng = np.random.default_rng(7)
    maps = make_maps("infinities", rng, 6, 8, 8)
    masks = random_masks(rng, 6, 8, 8)
    ours = roc_auc(maps, masks)
    # sklearn refuses infinite scores, so compare with the same ranks on finite stand-ins.
    finite_maps = torch.nan_to_num(maps, posinf=1e3, neginf=-1e3)
    assert_auc_matches(ours, sklearn_auc(finite_maps, masks), atol=1e-12)


@pytest.mark.parametrize(
    ("mask_kind", "expected_nan"),
    [("empty", True), ("full", True), ("single_pixel", False), ("single_negative", False)],
)
def test_roc_auc_degenerate_masks(mask_kind: str, expected_nan: bool) -> None:
    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.integers(0, 4, (3, 9, 9)).astype(np.float32))
    masks = torch.zeros(3, 9, 9, dtype=torch.bool)
    if mask_kind == "full":
        masks[:] = True
    elif mask_kind == "single_pixel":
        masks[:, 4, 4] = True
    elif mask_kind == "single_negative":
        masks[:] = True
        masks[:, 0, 8] = False
    ours = roc_auc(maps, masks)
    assert bool(torch.isnan(ours).all()) is expected_nan
    if not expected_nan:
        assert_auc_matches(ours, sklearn_auc(maps, masks), atol=1e-12)


def test_roc_auc_known_values() -> None:
    base = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    maps = torch.cat([base, -base, torch.zeros(1, 4, 4)])
    masks = (base >= 8).expand(3, 4, 4)
    assert roc_auc(maps, masks).tolist() == [1.0, 0.0, 0.5]


@pytest.mark.parametrize("kind", ["continuous_f32", "levels3_f32", "float64_ties"])
def test_roc_auc_chunking_does_not_change_results(kind: str) -> None:
    rng = np.random.default_rng(11)
    maps = make_maps(kind, rng, 9, 12, 10)
    masks = random_masks(rng, 9, 12, 10)
    whole = roc_auc(maps, masks, chunk_size=1000)
    for chunk in (1, 2, 4):
        torch.testing.assert_close(
            roc_auc(maps, masks, chunk_size=chunk), whole, rtol=0.0, atol=0.0, equal_nan=True
        )


def test_roc_auc_float32_227_matches_sklearn_to_1e9() -> None:
    maps = gradcam_like(4, 227, seed=5)
    gen = torch.Generator().manual_seed(6)
    yy, xx = torch.meshgrid(torch.arange(227.0), torch.arange(227.0), indexing="ij")
    centre = 40 + 140 * torch.rand(4, 2, 1, 1, generator=gen)
    radius = 20 + 60 * torch.rand(4, 1, 1, generator=gen)
    masks = (yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 <= radius**2
    assert maps.dtype == torch.float32
    assert_auc_matches(roc_auc(maps, masks), sklearn_auc(maps, masks), atol=1e-9)


def test_roc_auc_accepts_01_masks_and_empty_batch() -> None:
    rng = np.random.default_rng(2)
    maps = make_maps("levels5_f32", rng, 4, 5, 5)
    masks = random_masks(rng, 4, 5, 5)
    torch.testing.assert_close(
        roc_auc(maps, masks.to(torch.uint8)), roc_auc(maps, masks), equal_nan=True
    )
    torch.testing.assert_close(roc_auc(maps, masks.double()), roc_auc(maps, masks), equal_nan=True)
    empty = roc_auc(torch.zeros(0, 5, 5), torch.zeros(0, 5, 5, dtype=torch.bool))
    assert empty.shape == (0,)
    assert empty.dtype == torch.float64


@pytest.mark.parametrize(
    ("maps", "masks", "error", "match"),
    [
        (
            torch.zeros(2, 3, 4),
            torch.zeros(2, 3, 5, dtype=torch.bool),
            ValueError,
            r"same shape.*\(2, 3, 4\).*\(2, 3, 5\)",
        ),
        (torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.bool), ValueError, r"\[B, H, W\]"),
        (torch.tensor([[[0.0, math.nan]]]), torch.tensor([[[True, False]]]), ValueError, "NaN"),
        (torch.zeros(1, 1, 2), torch.tensor([[[0, 2]]]), ValueError, "0 and 1"),
        (np.zeros((1, 2, 2)), torch.zeros(1, 2, 2, dtype=torch.bool), TypeError, "torch.Tensor"),
        (
            torch.zeros(1, 1, 2, dtype=torch.complex64),
            torch.zeros(1, 1, 2, dtype=torch.bool),
            TypeError,
            "real",
        ),
    ],
)
def test_map_metrics_validate_inputs(
    maps: Any, masks: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        roc_auc(maps, masks)
    with pytest.raises(error, match=match):
        pointing_game(maps, masks)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_roc_auc_rejects_bad_chunk_size(chunk_size: Any) -> None:
    maps, masks = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="chunk_size"):
        roc_auc(maps, masks, chunk_size=chunk_size)


# --------------------------------------------------------------------------------------------
# pointing_game
# --------------------------------------------------------------------------------------------


def brute_force_pointing(maps: torch.Tensor, masks: torch.Tensor, tolerance: int) -> list[bool]:
    hits = []
    for m, k in zip(maps.tolist(), masks.tolist(), strict=True):
        best, by, bx = -math.inf, 0, 0
        for y, row in enumerate(m):
            for x, value in enumerate(row):
                if value > best:  # strict: the first maximum in row-major order wins
                    best, by, bx = value, y, x
        hit = any(
            k[y][x]
            for y in range(max(0, by - tolerance), min(len(k), by + tolerance + 1))
            for x in range(max(0, bx - tolerance), min(len(k[0]), bx + tolerance + 1))
        )
        hits.append(hit)
    return hits


@pytest.mark.parametrize("tolerance", [0, 1, 2, 5, 40])
@pytest.mark.parametrize("levels", [2, 3, 1000])
def test_pointing_game_matches_brute_force(tolerance: int, levels: int) -> None:
    rng = np.random.default_rng(tolerance * 1000 + levels)
    # Few levels -> many pixels share the maximum, so "first maximum" decides the outcome.
    maps = torch.from_numpy(rng.integers(0, levels, (24, 11, 13)).astype(np.float32))
    masks = torch.from_numpy(rng.random((24, 11, 13)) < 0.15)
    masks[0] = False
    got = pointing_game(maps, masks, tolerance=tolerance)
    assert got.dtype == torch.bool
    assert got.tolist() == brute_force_pointing(maps, masks, tolerance)


def test_pointing_game_first_maximum_in_row_major_order() -> None:
    maps = torch.zeros(3, 4, 5)
    maps[0, 1, 3] = maps[0, 2, 0] = 1.0  # (1, 3) comes first in row-major order
    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[0, 1, 3] = True
    masks[1, 2, 0] = True  # all-zero map 1 points at (0, 0): a miss
    masks[2, 0, 0] = True  # all-zero map 2 points at (0, 0): a hit
    assert pointing_game(maps, masks).tolist() == [True, False, True]
    # Chebyshev neighbourhood of map 1's peak (0, 0): (2, 0) is 2 steps away, (1, 1) is 1.
    assert pointing_game(maps, masks, tolerance=1).tolist() == [True, False, True]
    masks[1, 1, 1] = True
    assert pointing_game(maps, masks, tolerance=1).tolist() == [True, True, True]


@pytest.mark.parametrize("tolerance", [-1, 1.5, True])
def test_pointing_game_rejects_bad_tolerance(tolerance: Any) -> None:
    maps, masks = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(maps, masks, tolerance=tolerance)


# --------------------------------------------------------------------------------------------
# map_cosine / map_l2
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (4, 6, 6), (3, 2, 5, 4)])
def test_map_cosine_matches_torch_and_numpy(shape: tuple[int, ...]) -> None:
    a = torch.randn(shape)
    b = torch.randn(shape)
    ours = map_cosine(a, b)
    assert ours.shape == (shape[0],)
    assert ours.dtype == torch.float64
    a64, b64 = a.double().flatten(1), b.double().flatten(1)
    torch.testing.assert_close(ours, F.cosine_similarity(a64, b64, dim=1), rtol=0, atol=1e-14)
    an, bn = a64.numpy(), b64.numpy()
    expected = (an * bn).sum(1) / (np.linalg.norm(an, axis=1) * np.linalg.norm(bn, axis=1))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape", [(5, 7), (4, 6, 6), (3, 2, 5, 4)])
def test_map_l2_matches_numpy(shape: tuple[int, ...]) -> None:
    a = torch.rand(shape)
    b = torch.rand(shape)
    ours = map_l2(a, b)
    assert ours.shape == (shape[0],)
    an = a.double().flatten(1).numpy()
    bn = b.double().flatten(1).numpy()
    an = an / np.linalg.norm(an, axis=1, keepdims=True)
    bn = bn / np.linalg.norm(bn, axis=1, keepdims=True)
    np.testing.assert_allclose(ours.numpy(), np.linalg.norm(an - bn, axis=1), rtol=0, atol=1e-14)


def test_map_similarities_on_zero_and_scaled_maps() -> None:
    base = torch.rand(1, 4, 4) + 0.1
    zero = torch.zeros(1, 4, 4)
    a = torch.cat([base, zero, zero, base])
    b = torch.cat([3.0 * base, base, zero, -base])
    cos = map_cosine(a, b)
    l2 = map_l2(a, b)
    assert not bool(torch.isnan(cos).any() | torch.isnan(l2).any())
    torch.testing.assert_close(cos, torch.tensor([1.0, 0.0, 0.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(l2, torch.tensor([0.0, 1.0, 0.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("fn", [map_cosine, map_l2])
def test_map_similarities_validate_shapes(fn: Any) -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3\).*\(2, 4\)"):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.zeros(()), torch.zeros(()))


# --------------------------------------------------------------------------------------------
# average precision, F1, top-1
# --------------------------------------------------------------------------------------------


def multilabel_case(seed: int, n: int = 40, c: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    # Scores on a coarse grid: many exact ties within classes and within samples.
    scores = rng.integers(0, 6, (n, c)).astype(np.float32) / 5.0
    labels = (rng.random((n, c)) < 0.3).astype(np.int64)
    labels[:, 0] = 0  # a class without a positive: excluded from the mean
    labels[:3] = 0  # samples without a positive: excluded from the sample mean
    labels[:, 1] = 1  # a class that is all positive
    labels[:3, 1] = 0
    return torch.from_numpy(scores), torch.from_numpy(labels)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mean_average_precision_matches_sklearn(seed: int) -> None:
    scores, labels = multilabel_case(seed)
    y, s = labels.numpy(), scores.numpy()
    keep = y.sum(0) > 0
    per_class = [average_precision_score(y[:, j], s[:, j]) for j in np.flatnonzero(keep)]
    expected = 100.0 * float(np.mean(per_class))
    assert mean_average_precision(scores, labels) == pytest.approx(expected, abs=1e-10)
    macro = 100.0 * average_precision_score(y[:, keep], s[:, keep], average="macro")
    assert mean_average_precision(scores.double(), labels.bool()) == pytest.approx(macro, abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sample_average_precision_matches_sklearn(seed: int) -> None:
    scores, labels = multilabel_case(seed)
    y, s = labels.numpy(), scores.numpy()
    rows = y.sum(1) > 0
    expected = 100.0 * average_precision_score(y[rows], s[rows], average="samples")
    assert sample_average_precision(scores, labels) == pytest.approx(expected, abs=1e-10)
    per_row = [average_precision_score(y[i], s[i]) for i in np.flatnonzero(rows)]
    assert sample_average_precision(scores, labels) == pytest.approx(
        100.0 * float(np.mean(per_row)), abs=1e-10
    )


def test_average_precision_without_positives_is_nan() -> None:
    scores = torch.rand(4, 3)
    labels = torch.zeros(4, 3, dtype=torch.long)
    assert math.isnan(mean_average_precision(scores, labels))
    assert math.isnan(sample_average_precision(scores, labels))


def test_average_precision_perfect_ranking_is_100() -> None:
    labels = torch.tensor([[1, 0], [0, 1], [1, 0]])
    scores = labels.float() * 2.0 - 1.0
    assert mean_average_precision(scores, labels) == pytest.approx(100.0)
    assert sample_average_precision(scores, labels) == pytest.approx(100.0)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_f1_samples_matches_sklearn_zero_division_1(threshold: float) -> None:
    rng = np.random.default_rng(int(threshold * 10))
    probs = rng.integers(0, 11, (50, 6)).astype(np.float32) / 10.0  # values exactly at 0.3 etc.
    labels = (rng.random((50, 6)) < 0.3).astype(np.int64)
    labels[:4] = 0
    probs[:2] = 0.0  # no label and no prediction: F1 undefined, scored 1
    preds = (probs >= np.float32(threshold)).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = 100.0 * f1_score(labels, preds, average="samples", zero_division=1.0)
    got = f1_samples(torch.from_numpy(probs), torch.from_numpy(labels), threshold=threshold)
    assert got == pytest.approx(expected, abs=1e-10)


def test_f1_samples_counts_probability_at_threshold_as_positive() -> None:
    probs = torch.tensor([[0.5, 0.2], [0.0, 0.0]])
    labels = torch.tensor([[1, 0], [0, 0]])
    assert f1_samples(probs, labels) == pytest.approx(100.0)


def test_top1_accuracy_matches_numpy_and_takes_first_maximum() -> None:
    logits = torch.randn(30, 5)
    logits[0] = 1.0  # a tie: argmax is class 0
    targets = torch.randint(0, 5, (30,))
    targets[0] = 0
    expected = 100.0 * float(np.mean(logits.numpy().argmax(1) == targets.numpy()))
    assert top1_accuracy(logits, targets) == pytest.approx(expected)
    assert math.isnan(top1_accuracy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)))


@pytest.mark.parametrize("fn", [mean_average_precision, sample_average_precision, f1_samples])
def test_multilabel_metrics_validate_inputs(fn: Any) -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(4, 3\).*\(4, 2\)"):
        fn(torch.rand(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="0 and 1"):
        fn(torch.rand(4, 3), torch.full((4, 3), 2))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.full((4, 3), math.nan), torch.zeros(4, 3))


def test_top1_accuracy_validates_inputs() -> None:
    with pytest.raises(ValueError, match=r"same N.*\(4, 3\).*\(5,\)"):
        top1_accuracy(torch.rand(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        top1_accuracy(torch.rand(2, 3), torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        top1_accuracy(torch.rand(2, 3), torch.tensor([0.0, 1.0]))


# --------------------------------------------------------------------------------------------
# CUDA (deselected by default; `pytest -m gpu` on a machine with a GPU)
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_map_metrics_on_cuda_match_cpu() -> None:
    maps = gradcam_like(40, 64, seed=9)
    masks = torch.rand(40, 64, 64) < 0.3
    masks[0] = False
    cuda_auc = roc_auc(maps.cuda(), masks.cuda(), chunk_size=7)
    assert cuda_auc.device.type == "cuda"
    torch.testing.assert_close(cuda_auc.cpu(), roc_auc(maps, masks), equal_nan=True)
    for tolerance in (0, 3):
        assert torch.equal(
            pointing_game(maps.cuda(), masks.cuda(), tolerance=tolerance).cpu(),
            pointing_game(maps, masks, tolerance=tolerance),
        )
    scores, labels = multilabel_case(0)
    assert mean_average_precision(scores.cuda(), labels.cuda()) == pytest.approx(
        mean_average_precision(scores, labels), abs=1e-10
    )
