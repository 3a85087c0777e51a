"""PASCAL VOC 2012 as a multi-label classification data set, with class masks on ``seg_val``.

Layout (``root`` is the folder that holds ``VOCdevkit/``, as the official tar extracts)::

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/Annotations/<id>.xml
    root/VOCdevkit/VOC2012/ImageSets/Main/{train,val}.txt
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png      (palette PNGs)

Splits: ``train`` and ``val`` take their ids from ``ImageSets/Main/<split>.txt`` (5717 and
5823 images); ``seg_val`` from ``ImageSets/Segmentation/val.txt`` (1449 images) and adds masks.

Labels always come from the XML annotations: class ``c`` is positive when the image has an
object of that class. Objects marked ``<difficult>1</difficult>`` count only with
``include_difficult=True``; by default a class present *only* through difficult objects is a
negative (the usual VOC convention is to ignore such labels in evaluation; a binary target
cannot say "ignore", and a tiny or truncated object is a poor positive for attribution).

Masks (``seg_val``): palette index ``k`` in 1..20 is class ``k - 1``, 0 is background, 255 is
the "void" border and belongs to no class. A mask is kept only for classes that are labelled
positive, so ``masks[c]`` non-empty implies ``labels[c] == 1``; segmented pixels of a class
without a positive label (e.g. difficult-only with the default) are dropped. A labelled class
may still have an all-False mask (no segmented pixel of it, or all of it cropped away in
training); attribution metrics yield NaN there and evaluation must skip such pairs.

Images are decoded by :func:`trainables.data.decode.read_image` (JPEGs by
``torchvision.io.decode_jpeg``, no PIL image in between) into uint8 [3, H, W] before the shared
transform; a generated tree in this layout for tests and benchmarks is
:func:`trainables.data.voc_tree.write_voc_tree`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from trainables.data._validation import (
    check_bool,
    check_choice,
    check_index,
    check_optional_bool,
    check_path,
)
from trainables.data.decode import read_image
from trainables.data.sample import ImageDataset, Sample
from trainables.data.transforms import DEFAULT_CROP_SCALE, ImageMaskTransform

__all__ = ["VOC_CLASSES", "VOC_SPLITS", "VOCMultiLabel"]

VOC_CLASSES: Final[tuple[str, ...]] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_SPLITS: Final[tuple[str, ...]] = ("train", "val", "seg_val")

_VOID: Final = 255
_LAYOUT: Final = (
    "expected layout: <root>/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, Annotations/<id>.xml, "
    "ImageSets/Main/{train,val}.txt, ImageSets/Segmentation/val.txt, "
    "SegmentationClass/<id>.png}, where root is the folder that holds VOCdevkit/"
)


class VOCMultiLabel(ImageDataset):
    """PASCAL VOC 2012 multi-label images (and class masks for ``seg_val``).

    ``dataset[i]`` follows :mod:`trainables.data.sample`: ``image`` float32 [3, S, S]
    normalised, ``labels`` float32 [20] multi-hot, ``masks`` bool [20, S, S] on ``seg_val``,
    ``index`` int, with ``S = image_size``.

    Args:
        root: folder that holds ``VOCdevkit/``.
        split: ``"train"``, ``"val"`` or ``"seg_val"``.
        image_size: output side length in pixels.
        include_difficult: count objects marked difficult as positives.
        augment: training transform (random resized crop + flip) when True, plain resize
            when False; default True for ``train`` only.
        crop_scale: (min, max) area fraction of the training crop.

    Raises:
        FileNotFoundError: the VOC tree, the split file or a needed folder is missing (the
            message names the path and the expected layout).
        ValueError: an invalid option or an empty split file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        image_size: int = 224,
        *,
        include_difficult: bool = False,
        augment: bool | None = None,
        crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
    ) -> None:
        self.split = check_choice("split", split, VOC_SPLITS)
        self.include_difficult = check_bool("include_difficult", include_difficult)
        train = check_optional_bool("augment", augment)
        self.transform = ImageMaskTransform(
            image_size, train=split == "train" if train is None else train, crop_scale=crop_scale
        )
        self.root = check_path("root", root, "the folder that holds VOCdevkit/")
        self.voc_dir = self.root / "VOCdevkit" / "VOC2012"
        self._check_tree()
        split_file = (
            self.voc_dir / "ImageSets" / "Segmentation" / "val.txt"
            if split == "seg_val"
            else self.voc_dir / "ImageSets" / "Main" / f"{split}.txt"
        )
        self.ids: tuple[str, ...] = _read_ids(split_file)

    @property
    def deterministic(self) -> bool:
        return not self.transform.train

    @property
    def classes(self) -> tuple[str, ...]:
        return VOC_CLASSES

    @property
    def multi_label(self) -> bool:
        return True

    @property
    def has_masks(self) -> bool:
        return self.split == "seg_val"

    @property
    def image_size(self) -> int:
        return self.transform.image_size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        index = check_index(index, len(self.ids))
        image_id = self.ids[index]
        labels = self.labels_of(index)
        image = _read_image(self.voc_dir / "JPEGImages" / f"{image_id}.jpg")  # uint8 [3, H, W]
        if not self.has_masks:
            pixels, _ = self.transform(image)
            return {"image": pixels, "labels": labels, "index": index}
        class_map = self._class_map(image_id, (image.shape[1], image.shape[2]))
        pixels, out_map = self.transform(image, class_map)
        assert out_map is not None  # a map in gives a map out
        # Palette index k is class k - 1; comparing with 1..C leaves 0 and 255 in no class.
        class_ids = torch.arange(1, len(VOC_CLASSES) + 1, dtype=out_map.dtype).view(-1, 1, 1)
        masks = (out_map.unsqueeze(0) == class_ids) & (labels > 0).view(-1, 1, 1)
        return {"image": pixels, "labels": labels, "masks": masks, "index": index}

    def labels_of(self, index: int) -> Tensor:
        """Labels of sample ``index`` from its XML annotation, without decoding the image.

        Returns:
            float32 Tensor [20], multi-hot.
        """
        index = check_index(index, len(self.ids))
        path = self.voc_dir / "Annotations" / f"{self.ids[index]}.xml"
        labels = torch.zeros(len(VOC_CLASSES), dtype=torch.float32)
        for name, difficult in _parse_objects(path):
            if self.include_difficult or not difficult:
                labels[VOC_CLASSES.index(name)] = 1.0
        return labels

    def _class_map(self, image_id: str, size: tuple[int, int]) -> Tensor:
        path = self.voc_dir / "SegmentationClass" / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"VOC segmentation mask not found: {path}; {_LAYOUT}")
        with Image.open(path) as png:
            if png.mode not in ("P", "L"):
                raise ValueError(
                    f"{path}: must be a palette ('P') or 'L' PNG of class indices, "
                    f"got mode {png.mode!r}"
                )
            class_map = np.array(png, dtype=np.uint8)
        if class_map.shape != size:
            raise ValueError(
                f"{path}: mask shape {class_map.shape} must equal its image's (H, W) {size}"
            )
        bad = (class_map > len(VOC_CLASSES)) & (class_map != _VOID)
        if bad.any():
            raise ValueError(
                f"{path}: pixel values must be 0 (background), 1..{len(VOC_CLASSES)} (classes) "
                f"or {_VOID} (void), got {int(class_map[bad][0])}"
            )
        return torch.from_numpy(class_map)

    def _check_tree(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root folder not found: {self.root}; {_LAYOUT}")
        if not self.voc_dir.is_dir():
            hint = ""
            if (self.root / "JPEGImages").is_dir():
                hint = " (root looks like the VOC2012 folder itself: pass the folder two levels up)"
            elif (self.root / "VOC2012").is_dir():
                hint = " (root looks like the VOCdevkit folder: pass its parent)"
            raise FileNotFoundError(f"VOC folder not found: {self.voc_dir}{hint}; {_LAYOUT}")
        needed = ["JPEGImages", "Annotations"]
        if self.split == "seg_val":
            needed.append("SegmentationClass")
        for name in needed:
            if not (self.voc_dir / name).is_dir():
                raise FileNotFoundError(f"VOC folder not found: {self.voc_dir / name}; {_LAYOUT}")


def _read_ids(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"VOC split file not found: {path}; {_LAYOUT}")
    # Class-specific split files carry a second column ("<id> 1"); the id is the first token.
    ids = tuple(line.split()[0] for line in path.read_text().splitlines() if line.strip())
    if not ids:
        raise ValueError(f"{path}: split file must list at least one image id, got none")
    return ids


def _parse_objects(path: Path) -> list[tuple[str, bool]]:
    """(class name, difficult) for every ``<object>`` of an annotation file."""
    if not path.is_file():
        raise FileNotFoundError(f"VOC annotation not found: {path}; {_LAYOUT}")
    data = path.read_bytes()
    # Annotations are plain XML; refusing DTDs keeps entity expansion out altogether.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise ValueError(f"{path}: annotations must not contain a DTD or entity declarations")
    try:
        tree = ET.fromstring(data)
    except ET.ParseError as error:
        raise ValueError(f"{path}: annotation is not valid XML ({error})") from error
    objects = []
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"{path}: object name must be one of the 20 VOC classes, got {name!r}")
        difficult = (obj.findtext("difficult") or "0").strip()
        objects.append((name, difficult not in ("", "0")))
    return objects


def _read_image(path: Path) -> Tensor:
    """uint8 [3, H, W] RGB; JPEGs through torchvision.io (:mod:`trainables.data.decode`)."""
    if not path.is_file():
        raise FileNotFoundError(f"VOC image not found: {path}; {_LAYOUT}")
    return read_image(path)
