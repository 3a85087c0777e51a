"""What a data set is, as data: one :class:`DatasetDescriptor` per name a spec may give.

The study side (spec checks, plan, preflight) asks these fields instead of the data set's
name. This module imports nothing heavy: the class is ``"module:Class"``, imported on use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["DATASETS", "DatasetDescriptor", "dataset_descriptor"]


@dataclass(frozen=True)
class DatasetDescriptor:
    """A data set.

    Attributes:
        name: what a spec's ``dataset.name`` says.
        factory: ``"module:Class"`` of its :class:`~trainables.data.sample.ImageDataset`.
        generated: drawn from a seed (no files): it takes ``seed`` and ``size``, and building
            it checks its options without drawing anything.
        multi_label: its samples may hold several labels (else exactly one).
        eval_split: the split trials are evaluated on.
        root_required: ``dataset.root`` is required (else it does not apply).
        default_image_size: ``dataset.image_size`` when the spec gives none.
        sized: ``dataset.train_size`` and ``dataset.val_size`` apply.
        class_folders: its classes are its split's folders, so the splits must agree.
    """

    name: str
    factory: str
    generated: bool = False
    multi_label: bool = True
    eval_split: str = "val"
    root_required: bool = True
    default_image_size: int = 224
    sized: bool = False
    class_folders: bool = False


#: The data sets, by name, in the order messages list them.
DATASETS: Final[dict[str, DatasetDescriptor]] = {
    d.name: d
    for d in (
        DatasetDescriptor(
            "shapes",
            "trainables.data.shapes:ShapesDataset",
            generated=True,
            root_required=False,
            default_image_size=64,
            sized=True,
        ),
        DatasetDescriptor("voc2012", "trainables.data.voc:VOCMultiLabel", eval_split="seg_val"),
        DatasetDescriptor(
            "imagefolder",
            "trainables.data.imagefolder:ImageFolderData",
            multi_label=False,
            class_folders=True,
        ),
    )
}


def dataset_descriptor(name: str) -> DatasetDescriptor:
    """The descriptor of data set ``name``; ValueError for an unknown name."""
    if name not in DATASETS:
        raise ValueError(f"dataset name: must be one of {', '.join(DATASETS)}, got {name!r}")
    return DATASETS[name]
