from __future__ import annotations

import colorsys
import time
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainables.data.normalization import denormalize
from trainables.data.shapes import SHAPE_NAMES, ShapesDataset


def test_sample_contract_and_split_defaults() -> None:
    train = ShapesDataset("train")
    assert len(train) == 2000
    assert train.classes == SHAPE_NAMES
    assert train.num_classes == 10
    assert train.multi_label
    assert not train.has_masks
    assert train.image_size == 64
    sample = train[3]
    assert set(sample) == {"image", "labels", "index"}
    assert sample["image"].shape == (3, 64, 64)
    assert sample["image"].dtype == torch.float32
    assert sample["labels"].shape == (10,)
    assert sample["labels"].dtype == torch.float32
    assert sample["index"] == 3

    val = ShapesDataset("val", image_size=48)
    assert len(val) == 500
    assert val.has_masks
    masks = val[0]["masks"]
    assert masks.shape == (10, 48, 48)
    assert masks.dtype == torch.bool
    assert ShapesDataset("train", with_masks=True, size=1)[0]["masks"].shape == (10, 64, 64)
    assert "masks" not in ShapesDataset("seg_val", with_masks=False, size=1)[0]


def test_same_seed_gives_identical_samples_regardless_of_access_order() -> None:
    a = ShapesDataset("val", size=20, seed=7)
    b = ShapesDataset("val", size=20, seed=7)
    first = [a[i] for i in (5, 2, 9)]
    for i in reversed(range(20)):
        b[i]
    for sample, i in zip(first, (5, 2, 9), strict=True):
        other = b[i]
        assert torch.equal(sample["image"], other["image"])
        assert torch.equal(sample["labels"], other["labels"])
        assert torch.equal(sample["masks"], other["masks"])


def test_different_seeds_and_splits_differ_while_seg_val_equals_val() -> None:
    base = ShapesDataset("val", size=4, seed=0)[1]["image"]
    assert not torch.equal(base, ShapesDataset("val", size=4, seed=1)[1]["image"])
    assert not torch.equal(base, ShapesDataset("train", size=4, seed=0)[1]["image"])
    assert torch.equal(base, ShapesDataset("seg_val", size=4, seed=0)[1]["image"])
    assert not torch.equal(base, ShapesDataset("val", size=4, seed=0)[2]["image"])


def test_labels_and_masks_agree_and_masks_are_disjoint() -> None:
    ds = ShapesDataset("val", size=200)
    counts = []
    for i in range(len(ds)):
        sample, scene = ds[i], ds.render(i)
        # numpy, not torch: hundreds of tiny torch reductions are slow on a busy machine.
        labels, masks = sample["labels"].numpy(), sample["masks"].numpy()
        np.testing.assert_array_equal(masks.any(axis=(1, 2)), labels > 0)  # non-empty iff label
        assert masks.sum(axis=0).max() <= 1, i  # occlusion: a pixel shows one object
        assert sorted(np.flatnonzero(labels)) == sorted(o.class_index for o in scene.objects)
        # Every mask is exactly its object's visible pixels, and every object keeps >= half.
        for j, obj in enumerate(scene.objects):
            mask = masks[obj.class_index]
            np.testing.assert_array_equal(mask, scene.owner == j)
            assert obj.visible_pixels == mask.sum()
            assert obj.visible_pixels >= 0.5 * obj.area
            assert obj.area >= 0.8 * obj.radius**2  # the thinnest shapes cover ~0.85 r^2
        counts.append(len(scene.objects))
    assert set(counts) == {1, 2, 3}


def test_masks_are_exactly_the_pixels_painted_with_each_object() -> None:
    # Without noise an object's pixel is its colour times a shading factor in [0.85, 1.15];
    # heavy clutter makes distractors, strokes and occlusion all show up.
    ds = ShapesDataset(
        "val", size=40, noise_std=0.0, num_distractors=(4, 6), num_strokes=(6, 8), seed=3
    )
    for i in range(len(ds)):
        scene = ds.render(i)
        image = scene.image.astype(np.float64)
        for j, obj in enumerate(scene.objects):
            ratio = image / np.asarray(obj.colour).reshape(3, 1, 1)
            painted = (np.ptp(ratio, axis=0) < 1e-4) & (np.abs(ratio[0] - 1.0) <= 0.15 + 1e-4)
            np.testing.assert_array_equal(painted, scene.owner == j, err_msg=f"sample {i}")


def test_objects_are_at_least_fourteen_pixels_wide_at_64() -> None:
    ds = ShapesDataset("train", size=100, with_masks=True)
    for i in range(len(ds)):
        scene = ds.render(i)
        assert len(scene.objects) in (1, 2, 3)
        for obj in scene.objects:
            assert 2 * obj.radius >= 0.22 * 64
            assert 2 * obj.radius <= 0.45 * 64
            rows, cols = np.nonzero(ds[i]["masks"][obj.class_index].numpy())
            assert max(np.ptp(rows), np.ptp(cols)) + 1 >= 10


def test_class_frequencies_are_roughly_uniform() -> None:
    ds = ShapesDataset("train", size=600, seed=1)
    totals = torch.zeros(10)
    for i in range(len(ds)):
        totals += ds[i]["labels"]
    expected = totals.sum() / 10
    assert ((totals - expected).abs() / expected).max().item() < 0.35, totals.tolist()


@pytest.mark.parametrize("context_prob", [0.0, 0.8, 1.0])
def test_background_family_matches_first_class_at_the_configured_rate(
    context_prob: float,
) -> None:
    ds = ShapesDataset("train", size=500, context_prob=context_prob, seed=2)
    matches, applied = 0, 0
    for i in range(len(ds)):
        scene = ds.render(i)
        first = scene.objects[0].class_index
        matches += scene.background_family == first
        applied += scene.context_applied
        # The background colour lies in its family's hue band (centre family / K, +-0.25 / K).
        hue = colorsys.rgb_to_hsv(*scene.background_colour)[0]
        offset = (hue * 10 - scene.background_family + 5) % 10 - 5
        assert abs(offset) <= 0.25 + 1e-6
    expected = context_prob + (1 - context_prob) / 10
    assert abs(matches / len(ds) - expected) < 0.06
    assert abs(applied / len(ds) - context_prob) < 0.06


def test_background_pixels_carry_the_family_tint() -> None:
    ds = ShapesDataset("val", size=30, noise_std=0.0, num_distractors=(0, 0), num_strokes=(0, 0))
    for i in range(len(ds)):
        scene = ds.render(i)
        background = scene.image[:, scene.owner < 0].reshape(3, -1)
        # Stripes scale the colour, so every background pixel is a multiple of it.
        ratio = background / np.asarray(scene.background_colour, dtype=np.float32)[:, None]
        assert np.ptp(ratio, axis=0).max() < 1e-4


def test_dataloader_collation_and_normalisation() -> None:
    ds = ShapesDataset("seg_val", size=10)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64)
    assert batch["labels"].shape == (4, 10)
    assert batch["masks"].shape == (4, 10, 64, 64)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    rgb = denormalize(batch["image"])
    assert rgb.min().item() >= -1e-5
    assert rgb.max().item() <= 1 + 1e-5
    torch.testing.assert_close(rgb[0], torch.from_numpy(ds.render(0).image))


def test_augment_flips_image_and_masks_together() -> None:
    plain = ShapesDataset("val", size=8)
    flipping = ShapesDataset("val", size=8, augment=True)
    torch.manual_seed(0)
    flipped = 0
    for i in range(8):
        a, b = plain[i], flipping[i]
        if torch.equal(a["image"], b["image"]):
            assert torch.equal(a["masks"], b["masks"])
        else:
            flipped += 1
            assert torch.equal(a["image"].flip(-1), b["image"])
            assert torch.equal(a["masks"].flip(-1), b["masks"])
        assert torch.equal(a["labels"], b["labels"])
    assert 0 < flipped < 8


def test_larger_images_and_fewer_classes() -> None:
    ds = ShapesDataset("val", size=20, image_size=128, num_classes=4, num_objects=(2, 2))
    assert ds.classes == ("circle", "square", "triangle", "cross")
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (3, 128, 128)
        assert sample["masks"].shape == (4, 128, 128)
        assert sample["labels"].sum().item() in (1.0, 2.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_size": -3}, "image_size: must be an integer >= 32, got -3"),
        ({"split": "test"}, "split: must be one of train, val, seg_val, got 'test'"),
        ({"seed": -1}, "seed: must be an integer >= 0, got -1"),
        ({"size": 2.5}, "size: must be an integer >= 0, got 2.5"),
        ({"context_prob": 1.5}, r"context_prob: must be a number in \[0.0, 1.0\], got 1.5"),
        ({"num_objects": (0, 3)}, r"num_objects: must satisfy 1 <= min <= max <= 10"),
        ({"num_objects": [1, 11]}, r"num_objects: must satisfy 1 <= min <= max <= 10"),
        ({"num_classes": 11}, "num_classes: must be at most 10, got 11"),
        ({"object_scale": (0.5, 0.2)}, "object_scale: must satisfy"),
        ({"with_masks": "yes"}, "with_masks: must be true, false or null"),
        ({"augment": 1}, "augment: must be true or false, got 1"),
        ({"shapes": ["circle", "blob"]}, r"shapes: must be at least two distinct names of"),
        ({"shapes": ["circle", "circle"]}, r"shapes: must be at least two distinct names of"),
        (
            {"shapes": ["circle", "heart"], "num_classes": 3},
            r"num_classes: must equal the number of shapes \(2\) when both are given, got 3",
        ),
    ],
)
def test_invalid_options_name_the_rule_and_value(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapesDataset(**options)


def test_shapes_by_name_draw_those_shapes_in_label_order() -> None:
    # Areas in units of r^2 (exact for these three, far apart): equilateral triangle of
    # circumradius 1, square of half-side 0.72, cross of two 0.56 x 1.8 bars.
    areas = {"square": 1.44**2, "cross": 2 * 0.56 * 1.8 - 0.56**2, "triangle": 3**1.5 / 4}
    order = ("square", "cross", "triangle")
    ds = ShapesDataset(
        "val",
        size=12,
        image_size=128,
        shapes=order,
        num_objects=(1, 1),
        object_scale=(0.6, 0.8),
        num_strokes=(0, 0),
        num_distractors=(0, 0),
    )
    assert ds.classes == order
    assert ds.num_classes == 3
    for i in range(len(ds)):
        obj = ds.render(i).objects[0]
        assert int(ds[i]["labels"].argmax()) == obj.class_index
        measured = obj.area / obj.radius**2
        assert measured == pytest.approx(areas[order[obj.class_index]], rel=0.05)


def test_lists_from_yaml_are_accepted_as_ranges() -> None:
    ds = ShapesDataset("val", size=2, num_objects=[2, 3], object_scale=[0.3, 0.4])
    assert ds.num_objects == (2, 3)
    assert ds.object_scale == (0.3, 0.4)


def test_indexing() -> None:
    ds = ShapesDataset("val", size=5)
    assert ds[-1]["index"] == 4
    assert torch.equal(ds[-1]["image"], ds[4]["image"])
    with pytest.raises(IndexError, match=r"index: must be in \[0, 5\), got 5"):
        ds[5]
    with pytest.raises(TypeError):
        ds["0"]


def test_generation_cost_is_negligible() -> None:
    # Not a benchmark: a loose ceiling (~40x the measured cost) that catches pathologies.
    for image_size in (64, 128):
        ds = ShapesDataset("train", size=200, image_size=image_size)
        start = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        per_sample = (time.perf_counter() - start) / len(ds)
        print(f"shapes {image_size}px: {per_sample * 1e3:.3f} ms/sample")
        assert per_sample < 0.02 * image_size / 64
