"""Shared test settings: every test starts from the same torch seed; a generated VOC tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def voc2012_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated VOC 2012 tree (:func:`trainables.data.voc_tree.write_voc_tree`), written
    once per session and shared read-only: 40 train and 50 val images, of which 20 and 30 are
    segmented; returns the folder that holds ``VOCdevkit/``.

    (Not ``voc_tree``: that name is the hand-made four-image tree of
    ``tests/trainables/data/conftest.py``, which a test may modify.)
    """
    from trainables.data.voc_tree import write_voc_tree

    return write_voc_tree(
        tmp_path_factory.mktemp("voc2012"),
        **VOC2012_TREE_SIZES,
    )


#: The sizes :func:`voc2012_tree` writes, for tests that count.
VOC2012_TREE_SIZES: dict[str, int] = {
    "train": 40,
    "val": 50,
    "segmented_train": 20,
    "segmented_val": 30,
}
