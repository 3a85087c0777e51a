"""Single-label image folders (ImageNet style), optionally with per-image object masks.

Layout::

    root/<split>/<class>/<file>              images (.jpg .jpeg .png .bmp .ppm .webp .tif .tiff)
    mask_root/<split>/<class>/<stem>.png     optional object masks, nonzero = object

Classes are the sorted folder names under ``root/<split>`` unless ``classes`` is given; pass
the training split's ``classes`` to the evaluation split so that indices agree even when a
class folder is missing there. With ``mask_root`` every image needs a mask (a missing one is a
``FileNotFoundError`` when that sample is loaded), and ``masks`` [C, H, W] has only the
image's own class set: the object mask of the one labelled class, the other channels empty.
Transforms are the VOC ones (random resized crop + flip for training, resize otherwise), and
so is decoding (:func:`trainables.data.decode.read_image`: JPEGs through torchvision.io).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from trainables.data._validation import (
    check_choice,
    check_index,
    check_optional_bool,
    check_path,
)
from trainables.data.decode import read_image
from trainables.data.sample import ImageDataset, Sample
from trainables.data.transforms import DEFAULT_CROP_SCALE, ImageMaskTransform

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderData"]

IMAGE_EXTENSIONS: Final[tuple[str, ...]] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".webp",
    ".tif",
    ".tiff",
)
_LAYOUT: Final = (
    "expected layout: <root>/<split>/<class>/<image file> and, with mask_root, "
    "<mask_root>/<split>/<class>/<image stem>.png"
)


class ImageFolderData(ImageDataset):
    """Images in one folder per class, single-label, with optional object masks.

    ``dataset[i]`` follows :mod:`trainables.data.sample`: ``image`` float32 [3, S, S]
    normalised, ``labels`` float32 [C] one-hot, ``masks`` bool [C, S, S] when ``mask_root``
    is given, ``index`` int, with ``S = image_size``.

    Args:
        root: folder holding one sub-folder per split.
        split: sub-folder of ``root`` to read (e.g. ``"train"``, ``"val"``).
        image_size: output side length in pixels.
        mask_root: folder with the same ``<split>/<class>/`` layout holding ``<stem>.png``
            masks, or None for no masks.
        classes: class names in label order; default: sorted folder names of the split.
        augment: training transform when True, plain resize when False; default True for
            ``split == "train"`` only.
        crop_scale: (min, max) area fraction of the training crop.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        image_size: int = 224,
        *,
        mask_root: str | os.PathLike[str] | None = None,
        classes: Sequence[str] | None = None,
        augment: bool | None = None,
        crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
    ) -> None:
        if not isinstance(split, str) or not split or Path(split).name != split:
            raise ValueError(f"split: must be a plain folder name, got {split!r}")
        train = check_optional_bool("augment", augment)
        self.transform = ImageMaskTransform(
            image_size, train=split == "train" if train is None else train, crop_scale=crop_scale
        )
        self.root = check_path("root", root, "the folder holding one sub-folder per split")
        self.split = split
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"image folder split not found: {self.split_dir}; {_LAYOUT}")
        folders = sorted(p.name for p in self.split_dir.iterdir() if p.is_dir())
        if classes is None:
            self._classes = tuple(folders)
        else:
            if isinstance(classes, str) or len(set(classes)) != len(classes):
                raise ValueError(f"classes: must be a list of distinct names, got {classes!r}")
            self._classes = tuple(classes)
            for folder in folders:
                check_choice(f"class folder {self.split_dir / folder}", folder, self._classes)
        if not self._classes:
            raise ValueError(f"{self.split_dir}: must contain one folder per class, got none")
        self.mask_dir = (
            None
            if mask_root is None
            else check_path("mask_root", mask_root, "the mask folder (or null)") / split
        )
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise FileNotFoundError(f"mask folder not found: {self.mask_dir}; {_LAYOUT}")
        self.samples: tuple[tuple[Path, int], ...] = tuple(
            (path, target)
            for target, name in enumerate(self._classes)
            for path in _list_images(self.split_dir / name)
        )
        if not self.samples:
            raise ValueError(
                f"{self.split_dir}: must hold at least one image with an extension in "
                f"{', '.join(IMAGE_EXTENSIONS)}, got none"
            )

    @property
    def deterministic(self) -> bool:
        return not self.transform.train

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    @property
    def multi_label(self) -> bool:
        return False

    @property
    def has_masks(self) -> bool:
        return self.mask_dir is not None

    @property
    def image_size(self) -> int:
        return self.transform.image_size

    @property
    def targets(self) -> tuple[int, ...]:
        """Class index of every sample, in sample order."""
        return tuple(target for _, target in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        index = check_index(index, len(self.samples))
        path, target = self.samples[index]
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[target] = 1.0
        image = read_image(path)  # uint8 [3, H, W]; JPEGs through torchvision.io
        if self.mask_dir is None:
            pixels, _ = self.transform(image)
            return {"image": pixels, "labels": labels, "index": index}
        object_map = self._object_map(path, target, (image.shape[1], image.shape[2]))
        pixels, out_map = self.transform(image, object_map)
        assert out_map is not None  # a map in gives a map out
        size = self.image_size
        masks = torch.zeros((self.num_classes, size, size), dtype=torch.bool)
        masks[target] = out_map > 0
        return {"image": pixels, "labels": labels, "masks": masks, "index": index}

    def _object_map(self, image_path: Path, target: int, size: tuple[int, int]) -> Tensor:
        assert self.mask_dir is not None
        path = self.mask_dir / self._classes[target] / f"{image_path.stem}.png"
        if not path.is_file():
            raise FileNotFoundError(f"mask not found: {path} (for {image_path}); {_LAYOUT}")
        with Image.open(path) as png:
            # Palette PNGs give indices and grey ones values; colour ones are read without
            # their alpha channel (an opaque alpha would mark every pixel). Nonzero = object.
            single = png.mode in ("1", "L", "P", "I", "I;16", "F")
            values = np.asarray(png if single else png.convert("RGB"))
        mask = values != 0 if single else values.any(axis=-1)
        if mask.shape != size:
            raise ValueError(f"{path}: mask shape {mask.shape} must equal its image's {size}")
        return torch.from_numpy(mask.astype(np.uint8))


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
