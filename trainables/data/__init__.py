"""Data sets behind the studies: one sample contract, one normalisation, three sources.

- :mod:`~trainables.data.sample`: the ``Sample`` dict and ``ImageDataset`` base every data
  set honours (``image`` [3, H, W] normalised, ``labels`` [C], ``masks`` [C, H, W] when the
  split has masks, ``index``).
- :mod:`~trainables.data.normalization`: ``IMAGE_MEAN``/``IMAGE_STD`` and their (inverse)
  application.
- :mod:`~trainables.data.shapes`: the embedded synthetic multi-label data set (no files).
- :mod:`~trainables.data.voc`: PASCAL VOC 2012 multi-label, with class masks on ``seg_val``.
- :mod:`~trainables.data.imagefolder`: single-label class folders with optional masks.
- :mod:`~trainables.data.transforms`: the train/eval image + mask transforms of the file-backed
  data sets.
- :mod:`~trainables.data.decode`: image files to uint8 [3, H, W] (JPEGs through torchvision.io).
- :mod:`~trainables.data.voc_tree`: ``write_voc_tree``, a generated VOC 2012 tree for tests and
  benchmarks.
- :mod:`~trainables.data.registry`: ``build_dataset(name, split=..., **options)``.

The torchvision-backed names (VOC, image folders, transforms) load on first access, so that
``import trainables.data`` for the shapes data set does not import torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from trainables.data.normalization import IMAGE_MEAN, IMAGE_STD, denormalize, normalize
from trainables.data.registry import (
    DATASET_NAMES,
    build_dataset,
    dataset_factory,
    dataset_options,
)
from trainables.data.sample import ImageDataset, Sample
from trainables.data.shapes import SHAPE_NAMES, ShapesDataset, ShapesObject, ShapesScene

if TYPE_CHECKING:
    from trainables.data.imagefolder import IMAGE_EXTENSIONS, ImageFolderData
    from trainables.data.transforms import DEFAULT_CROP_SCALE, ImageMaskTransform
    from trainables.data.voc import VOC_CLASSES, VOC_SPLITS, VOCMultiLabel

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_CROP_SCALE",
    "IMAGE_EXTENSIONS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "SHAPE_NAMES",
    "VOC_CLASSES",
    "VOC_SPLITS",
    "ImageDataset",
    "ImageFolderData",
    "ImageMaskTransform",
    "Sample",
    "ShapesDataset",
    "ShapesObject",
    "ShapesScene",
    "VOCMultiLabel",
    "build_dataset",
    "dataset_factory",
    "dataset_options",
    "denormalize",
    "normalize",
]

_LAZY: dict[str, str] = {
    "IMAGE_EXTENSIONS": "trainables.data.imagefolder",
    "ImageFolderData": "trainables.data.imagefolder",
    "DEFAULT_CROP_SCALE": "trainables.data.transforms",
    "ImageMaskTransform": "trainables.data.transforms",
    "VOC_CLASSES": "trainables.data.voc",
    "VOC_SPLITS": "trainables.data.voc",
    "VOCMultiLabel": "trainables.data.voc",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
