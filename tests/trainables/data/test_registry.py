from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch

import trainables.data as data
from trainables.data import DATASET_NAMES, build_dataset, dataset_options
from trainables.data.imagefolder import ImageFolderData
from trainables.data.sample import ImageDataset
from trainables.data.shapes import ShapesDataset
from trainables.data.voc import VOCMultiLabel

from .conftest import FolderTree, VOCTree


def test_builds_each_registered_data_set(voc_tree: VOCTree, folder_tree: FolderTree) -> None:
    assert DATASET_NAMES == ("shapes", "voc2012", "imagefolder")
    shapes = build_dataset("shapes", split="val", size=3, image_size=32)
    assert isinstance(shapes, ShapesDataset)
    assert shapes[0]["image"].shape == (3, 32, 32)
    voc = build_dataset("voc2012", split="seg_val", root=voc_tree.root, image_size=32)
    assert isinstance(voc, VOCMultiLabel)
    assert voc.has_masks
    folders = build_dataset("imagefolder", split="val", root=str(folder_tree.root))
    assert isinstance(folders, ImageFolderData)
    assert folders.image_size == 224
    for ds in (shapes, voc, folders):
        assert isinstance(ds, ImageDataset)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="dataset name: must be one of shapes, voc2012, imagefolder, got 'coco'"
    ):
        build_dataset("coco", split="train")


def test_unknown_and_missing_options() -> None:
    with pytest.raises(ValueError, match=r"dataset 'shapes' options: .*got unknown colour, root"):
        build_dataset("shapes", split="train", root="x", colour=1)
    with pytest.raises(ValueError, match="dataset 'voc2012' options: must include root"):
        build_dataset("voc2012", split="train", image_size=32)
    assert dataset_options("voc2012")["root"] is True
    assert dataset_options("voc2012")["image_size"] is False
    assert "split" not in dataset_options("shapes")


def test_package_exports_resolve() -> None:
    for name in data.__all__:
        assert getattr(data, name) is not None
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018


def test_importing_the_package_does_not_import_torchvision() -> None:
    code = (
        "import sys, trainables.data as d; "
        "d.ShapesDataset('val', size=1)[0]; "
        "assert 'torchvision' not in sys.modules, 'torchvision imported eagerly'; "
        "d.VOCMultiLabel; assert 'torchvision' in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_data_sets_pickle_for_dataloader_workers(
    voc_tree: VOCTree, folder_tree: FolderTree
) -> None:
    data_sets: list[ImageDataset] = [
        ShapesDataset("val", size=2),
        VOCMultiLabel(voc_tree.root, "seg_val", 32),
        ImageFolderData(folder_tree.root, "val", 16, mask_root=folder_tree.mask_root),
    ]
    for ds in data_sets:
        clone = pickle.loads(pickle.dumps(ds))
        assert len(clone) == len(ds)
        assert torch.equal(clone[0]["image"], ds[0]["image"])
        assert torch.equal(clone[0]["masks"], ds[0]["masks"])


def test_missing_root_value_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="root: must be the path of the folder that holds"):
        VOCMultiLabel(None, "train", 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="root: must be the path of"):
        build_dataset("imagefolder", split="train", root="")
