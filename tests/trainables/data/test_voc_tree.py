"""The generated VOC 2012 tree: what the loader reads of it, and that it looks like VOC's.

Uses the session fixture ``voc2012_tree`` (tests/conftest.py); tests here only read it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import VOC2012_TREE_SIZES
from trainables.data.decode import read_image, read_image_pil
from trainables.data.voc import VOC_CLASSES, VOCMultiLabel
from trainables.data.voc_tree import VOC_IMAGE_SIZES, voc_palette, write_voc_tree

VOID = 255
PERSON = VOC_CLASSES.index("person")


def voc_dir(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


def ids(root: Path, name: str) -> list[str]:
    return (voc_dir(root) / "ImageSets" / name).read_text().split()


def objects(root: Path, image_id: str) -> list[ET.Element]:
    tree = ET.parse(voc_dir(root) / "Annotations" / f"{image_id}.xml")
    return list(tree.getroot().iter("object"))


def difficult_only(root: Path, image_id: str) -> set[str]:
    """Classes of an image present only through difficult objects, from its XML."""
    kinds: dict[str, set[bool]] = {}
    for obj in objects(root, image_id):
        kinds.setdefault(obj.findtext("name", ""), set()).add(obj.findtext("difficult") == "1")
    return {name for name, flags in kinds.items() if flags == {True}}


@pytest.mark.parametrize(
    ("split", "size", "masks"),
    [
        ("train", VOC2012_TREE_SIZES["train"], False),
        ("val", VOC2012_TREE_SIZES["val"], False),
        ("seg_val", VOC2012_TREE_SIZES["segmented_val"], True),
    ],
)
def test_the_loader_reads_every_split_and_every_class_is_in_it(
    voc2012_tree: Path, split: str, size: int, masks: bool
) -> None:
    ds = VOCMultiLabel(voc2012_tree, split, 64)
    assert len(ds) == size
    assert ds.has_masks is masks
    labels = torch.stack([ds.labels_of(i) for i in range(len(ds))])
    assert bool((labels.sum(dim=0) > 0).all()), "every class has a positive image"
    sample = ds[len(ds) - 1]
    assert sample["image"].shape == (3, 64, 64)
    assert sample["image"].dtype == torch.float32
    if masks:
        assert sample["masks"].shape == (20, 64, 64)
        assert sample["masks"].dtype == torch.bool


def test_split_lists_nest_as_voc_2012s_do(voc2012_tree: Path) -> None:
    train, val = ids(voc2012_tree, "Main/train.txt"), ids(voc2012_tree, "Main/val.txt")
    assert not set(train) & set(val)
    assert ids(voc2012_tree, "Main/trainval.txt") == sorted(train + val)
    seg_train = ids(voc2012_tree, "Segmentation/train.txt")
    seg_val = ids(voc2012_tree, "Segmentation/val.txt")
    assert set(seg_train) <= set(train)
    assert set(seg_val) <= set(val)
    assert ids(voc2012_tree, "Segmentation/trainval.txt") == sorted(seg_train + seg_val)
    assert (len(seg_train), len(seg_val)) == (
        VOC2012_TREE_SIZES["segmented_train"],
        VOC2012_TREE_SIZES["segmented_val"],
    )
    for image_id in train + val:
        year, number = image_id.split("_")
        assert 2007 <= int(year) <= 2012
        assert len(number) == 6
    # Per-class lists: "<id> -1|0| 1" for every image of the split.
    person = (voc_dir(voc2012_tree) / "ImageSets" / "Main" / "person_val.txt").read_text()
    entries = [line.split() for line in person.splitlines()]
    assert [e[0] for e in entries] == val
    assert {e[1] for e in entries} == {"-1", "0", "1"}


def test_every_segmented_image_has_a_palette_png_with_class_indices_and_void_borders(
    voc2012_tree: Path,
) -> None:
    palette = voc_palette()
    for image_id in ids(voc2012_tree, "Segmentation/trainval.txt"):
        with Image.open(voc_dir(voc2012_tree) / "SegmentationClass" / f"{image_id}.png") as png:
            assert png.mode == "P"
            assert png.getpalette() == palette
            values = np.asarray(png)
        present = set(np.unique(values).tolist())
        assert VOID in present
        assert present <= {0, VOID, *range(1, 21)}
        xml_classes = {
            VOC_CLASSES.index(o.findtext("name", "")) + 1 for o in objects(voc2012_tree, image_id)
        }
        assert present - {0, VOID} <= xml_classes
        # The void band lies between regions: every class pixel next to void, none inside a
        # region's interior, so no class region touches background directly.
        for axis in (0, 1):
            a = np.moveaxis(values, axis, 0)
            left, right = a[:-1], a[1:]
            touching = (left != right) & (left != VOID) & (right != VOID)
            assert not touching.any(), f"{image_id}: regions meet without a void border"


def test_the_void_border_is_a_few_pixels_wide(voc2012_tree: Path) -> None:
    image_id = ids(voc2012_tree, "Segmentation/val.txt")[0]
    with Image.open(voc_dir(voc2012_tree) / "SegmentationClass" / f"{image_id}.png") as png:
        values = np.asarray(png)
    # Widths of the void runs along rows, where a run lies between two non-void pixels.
    widths = []
    for row in values:
        void = np.flatnonzero(row == VOID)
        if void.size:
            runs = np.split(void, np.flatnonzero(np.diff(void) > 1) + 1)
            widths += [len(r) for r in runs if r[0] > 0 and r[-1] < len(row) - 1]
    assert widths
    assert 3 <= float(np.median(widths)) <= 6


def test_annotations_are_voc_xml_with_difficult_and_truncated_objects(voc2012_tree: Path) -> None:
    everything = ids(voc2012_tree, "Main/trainval.txt")
    flags: Counter[str] = Counter()
    for image_id in everything:
        root = ET.parse(voc_dir(voc2012_tree) / "Annotations" / f"{image_id}.xml").getroot()
        assert root.findtext("filename") == f"{image_id}.jpg"
        width, height = int(root.findtext("size/width", "")), int(root.findtext("size/height", ""))
        assert root.findtext("size/depth") == "3"
        with Image.open(voc_dir(voc2012_tree) / "JPEGImages" / f"{image_id}.jpg") as jpeg:
            assert jpeg.format == "JPEG"
            assert jpeg.size == (width, height)
        segmented = root.findtext("segmented") == "1"
        assert (
            segmented == (voc_dir(voc2012_tree) / "SegmentationClass" / f"{image_id}.png").is_file()
        )
        for obj in root.iter("object"):
            assert obj.findtext("name") in VOC_CLASSES
            assert obj.findtext("pose") in ("Frontal", "Rear", "Left", "Right", "Unspecified")
            xmin, ymin, xmax, ymax = (
                int(obj.findtext(f"bndbox/{k}", "")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            assert 1 <= xmin <= xmax <= width
            assert 1 <= ymin <= ymax <= height
            truncated = obj.findtext("truncated") == "1"
            # VOC clips a truncated object's box at the border.
            at_border = xmin == 1 or ymin == 1 or xmax == width or ymax == height
            assert not truncated or at_border
            flags["difficult"] += obj.findtext("difficult") == "1"
            flags["truncated"] += truncated
            flags["parts"] += obj.find("part") is not None
    assert flags["difficult"] >= 10
    assert flags["truncated"] >= 10
    assert flags["parts"] >= 1


def test_images_have_vocs_sizes(voc2012_tree: Path) -> None:
    sizes: Counter[tuple[int, int]] = Counter()
    for image_id in ids(voc2012_tree, "Main/trainval.txt"):
        with Image.open(voc_dir(voc2012_tree) / "JPEGImages" / f"{image_id}.jpg") as jpeg:
            sizes[(jpeg.height, jpeg.width)] += 1
    assert all(max(size) == 500 and min(size) >= 200 for size in sizes)
    assert sizes.most_common(1)[0][0] == (375, 500)
    assert len(sizes) >= len(VOC_IMAGE_SIZES)


def test_some_images_have_a_difficult_only_class_a_person_first(voc2012_tree: Path) -> None:
    for split in ("Main/train.txt", "Main/val.txt", "Segmentation/val.txt"):
        found = [difficult_only(voc2012_tree, i) for i in ids(voc2012_tree, split)]
        assert sum(bool(f) for f in found) >= 5, split
    seg_val = ids(voc2012_tree, "Segmentation/val.txt")
    assert any("person" in difficult_only(voc2012_tree, i) for i in seg_val)


def test_a_difficult_only_class_is_negative_by_default_and_its_mask_dropped(
    voc2012_tree: Path,
) -> None:
    default = VOCMultiLabel(voc2012_tree, "seg_val", 128)
    everything = VOCMultiLabel(voc2012_tree, "seg_val", 128, include_difficult=True)
    index = next(
        i
        for i, image_id in enumerate(default.ids)
        if "person" in difficult_only(voc2012_tree, image_id)
    )
    plain, counted = default[index], everything[index]
    assert plain["labels"][PERSON] == 0
    assert not plain["masks"][PERSON].any()
    assert counted["labels"][PERSON] == 1
    assert counted["masks"][PERSON].any(), "the difficult person is segmented"
    assert torch.equal(plain["image"], counted["image"])


def test_the_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    sizes = {"train": 20, "val": 20, "segmented_train": 20, "segmented_val": 20}
    first = write_voc_tree(tmp_path / "a", **sizes, seed=3)
    second = write_voc_tree(tmp_path / "b", **sizes, seed=3)
    other = write_voc_tree(tmp_path / "c", **sizes, seed=4)

    def contents(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    assert first == tmp_path / "a"
    assert contents(first) == contents(second)
    assert contents(first) != contents(other)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (
            {"train": 5},
            "train: must be an integer >= 20 (every split holds all 20 classes), got 5",
        ),
        (
            {"val": 30, "segmented_val": 31},
            "segmented_val: must be an integer in [20, 30] (a subset of its Main split, "
            "holding all 20 classes), got 31",
        ),
        ({"seed": -1}, "seed: must be a non-negative integer, got -1"),
    ],
)
def test_bad_sizes_are_refused_with_the_rule(
    tmp_path: Path, sizes: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        write_voc_tree(tmp_path, **sizes)
    assert not (tmp_path / "VOCdevkit").exists()


def test_torchvision_decoding_gives_pils_pixels_and_the_loaders_output_contract(
    voc2012_tree: Path,
) -> None:
    """decode_jpeg and PIL decode with the same libjpeg-turbo here: identical pixels; the
    transform gives the same float32 [3, S, S] from either."""
    ds = VOCMultiLabel(voc2012_tree, "val", 96)
    worst = 0
    for image_id in ds.ids[:10]:
        path = voc_dir(voc2012_tree) / "JPEGImages" / f"{image_id}.jpg"
        fast, reference = read_image(path), read_image_pil(path)
        assert fast.dtype == torch.uint8
        assert fast.shape == reference.shape
        worst = max(worst, int((fast.int() - reference.int()).abs().max()))
    assert worst <= 2
    with Image.open(voc_dir(voc2012_tree) / "JPEGImages" / f"{ds.ids[0]}.jpg") as image:
        from_pil, _ = ds.transform(image)
    assert torch.allclose(ds[0]["image"], from_pil, atol=2 / 255 / 0.2)
