"""Tiny on-disk data trees (VOC 2012 layout, class folders) written into tmp_path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data.voc import VOC_CLASSES

VOID = 255


def voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved), flattened to 768 entries."""
    palette: list[int] = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


@dataclass
class VOCImage:
    """What the fixture wrote for one image id."""

    objects: list[tuple[str, bool]]  # (class name, difficult)
    size: tuple[int, int]  # (height, width)
    seg: np.ndarray | None = None  # uint8 [H, W] palette indices, when segmented
    colour: tuple[int, int, int] | None = None  # uniform colour, when the image is uniform


@dataclass
class VOCTree:
    root: Path  # the folder holding VOCdevkit/
    images: dict[str, VOCImage] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def voc_dir(self) -> Path:
        return self.root / "VOCdevkit" / "VOC2012"


def _annotation(image_id: str, image: VOCImage) -> str:
    height, width = image.size
    parts = [
        "<annotation>",
        "<folder>VOC2012</folder>",
        f"<filename>{image_id}.jpg</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for i, (name, difficult) in enumerate(image.objects):
        # The last object of every file omits <difficult>, which must read as 0.
        tag = f"<difficult>{int(difficult)}</difficult>" if i < len(image.objects) - 1 else ""
        parts.append(
            f"<object><name> {name} </name><pose>Unspecified</pose><truncated>0</truncated>"
            f"{tag}<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
            "</object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def _paint(seg: np.ndarray, class_name: str, rows: slice, cols: slice) -> None:
    """A rectangle of the class's palette index with a 1-pixel void (255) border."""
    seg[rows, cols] = VOID
    inner_rows = slice(rows.start + 1, rows.stop - 1)
    inner_cols = slice(cols.start + 1, cols.stop - 1)
    seg[inner_rows, inner_cols] = VOC_CLASSES.index(class_name) + 1


@pytest.fixture
def voc_tree(tmp_path: Path) -> VOCTree:
    """Four images: two segmented val images (one with a difficult-only cat), two train ones.

    Images are 32x32 (so ``image_size=32`` resamples nothing and masks can be compared pixel
    for pixel), except one 24x40 training image that checks non-square inputs.
    """
    tree = VOCTree(root=tmp_path / "voc")
    rng = np.random.default_rng(0)

    seg1 = np.zeros((32, 32), dtype=np.uint8)
    _paint(seg1, "person", slice(2, 14), slice(2, 20))
    _paint(seg1, "dog", slice(16, 30), slice(4, 16))
    _paint(seg1, "cat", slice(18, 28), slice(20, 30))
    tree.images["2008_000001"] = VOCImage(
        objects=[("person", False), ("cat", True), ("dog", False)], size=(32, 32), seg=seg1
    )
    seg2 = np.zeros((32, 32), dtype=np.uint8)
    _paint(seg2, "aeroplane", slice(4, 28), slice(6, 30))
    tree.images["2008_000002"] = VOCImage(
        objects=[("aeroplane", False), ("aeroplane", False)], size=(32, 32), seg=seg2
    )
    tree.images["2008_000003"] = VOCImage(
        objects=[("car", False), ("car", True), ("bicycle", False)], size=(24, 40)
    )
    tree.images["2008_000004"] = VOCImage(
        objects=[("bottle", False)], size=(32, 32), colour=(124, 116, 104)
    )
    tree.splits = {
        "Main/train.txt": ["2008_000003", "2008_000004"],
        "Main/val.txt": ["2008_000001", "2008_000002"],
        "Segmentation/val.txt": ["2008_000001", "2008_000002"],
    }

    voc = tree.voc_dir
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for image_id, image in tree.images.items():
        height, width = image.size
        if image.colour is not None:
            pixels = np.empty((height, width, 3), dtype=np.uint8)
            pixels[...] = image.colour
        else:
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (voc / "Annotations" / f"{image_id}.xml").write_text(_annotation(image_id, image))
        if image.seg is not None:
            png = Image.fromarray(image.seg, mode="P")
            png.putpalette(voc_palette())
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
    for name, ids in tree.splits.items():
        (voc / "ImageSets" / name).write_text("".join(f"{i}\n" for i in ids))
    return tree


@dataclass
class FolderTree:
    root: Path
    mask_root: Path
    masks: dict[str, np.ndarray]  # "<split>/<class>/<stem>" -> bool [H, W]


@pytest.fixture
def folder_tree(tmp_path: Path) -> FolderTree:
    """root/{train,val}/{cat,dog}/*.png (16x16) and val masks (grey, palette and RGBA PNGs)."""
    root, mask_root = tmp_path / "images", tmp_path / "masks"
    rng = np.random.default_rng(1)
    masks: dict[str, np.ndarray] = {}
    layout = {"train": {"cat": 2, "dog": 1}, "val": {"cat": 1, "dog": 2}}
    for split, counts in layout.items():
        for cls, count in counts.items():
            (root / split / cls).mkdir(parents=True)
            (mask_root / split / cls).mkdir(parents=True)
            for i in range(count):
                stem = f"{cls}_{i}"
                pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{stem}.png")
                mask = np.zeros((16, 16), dtype=bool)
                mask[2 + i : 10 + i, 3 : 12 - i] = True
                masks[f"{split}/{cls}/{stem}"] = mask
                if i == 1:  # RGBA with an opaque alpha: alpha must not count as object
                    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
                    rgba[..., 3] = 255
                    rgba[mask, 0] = 200
                    png = Image.fromarray(rgba, mode="RGBA")
                else:
                    png = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
                png.save(mask_root / split / cls / f"{stem}.png")
    # Not an image: must be ignored.
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return FolderTree(root=root, mask_root=mask_root, masks=masks)
