"""Build a data set by name, as a study spec names it (``dataset: {name: ..., ...}``).

The implementations are imported on first use: ``shapes`` needs only numpy and PIL, while
``voc2012`` and ``imagefolder`` pull in torchvision, which a shapes-only worker should not pay
for at start-up.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, Final

from trainables.data.descriptors import DATASETS, dataset_descriptor
from trainables.data.sample import ImageDataset

__all__ = ["DATASET_NAMES", "build_dataset", "dataset_factory", "dataset_options"]

DATASET_NAMES: Final[tuple[str, ...]] = tuple(DATASETS)


def dataset_factory(name: str) -> Callable[..., ImageDataset]:
    """The data set class registered under ``name`` (imported now)."""
    module, _, attribute = dataset_descriptor(name).factory.partition(":")
    factory: Callable[..., ImageDataset] = getattr(importlib.import_module(module), attribute)
    return factory


def dataset_options(name: str) -> dict[str, bool]:
    """Options ``build_dataset(name, split=..., **options)`` accepts, each mapped to whether
    it is required (has no default). ``split`` is not listed: it is always passed apart."""
    parameters = inspect.signature(dataset_factory(name)).parameters
    return {
        key: p.default is inspect.Parameter.empty
        for key, p in parameters.items()
        if key != "split" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_dataset(name: str, *, split: str, **options: Any) -> ImageDataset:
    """Build the data set ``name`` for ``split`` with its keyword ``options``.

    Args:
        name: one of ``DATASET_NAMES`` (``"shapes"``, ``"voc2012"``, ``"imagefolder"``).
        split: the split, as the data set understands it (``train``, ``val``, ``seg_val``...).
        **options: the data set's constructor options, e.g. ``root`` and ``image_size``.

    Raises:
        ValueError: unknown name, unknown option or missing required option (the message
            lists the valid ones), or an invalid option value (raised by the data set).
    """
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {name!r} options: must be among {', '.join(accepted)}, "
            f"got unknown {', '.join(unknown)}"
        )
    missing = [key for key, required in accepted.items() if required and key not in options]
    if missing:
        raise ValueError(f"dataset {name!r} options: must include {', '.join(missing)}")
    return dataset_factory(name)(split=split, **options)
