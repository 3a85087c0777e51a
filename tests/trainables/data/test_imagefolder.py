from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainables.data.imagefolder import ImageFolderData

from .conftest import FolderTree


def test_classes_are_sorted_folders_and_labels_one_hot(folder_tree: FolderTree) -> None:
    ds = ImageFolderData(folder_tree.root, "train", 16)
    assert ds.classes == ("cat", "dog")
    assert not ds.multi_label
    assert not ds.has_masks
    assert len(ds) == 3  # notes.txt is not an image
    assert ds.targets == (0, 0, 1)
    for i in range(len(ds)):
        sample = ds[i]
        assert set(sample) == {"image", "labels", "index"}
        assert sample["image"].shape == (3, 16, 16)
        assert sample["labels"].tolist() == ([1.0, 0.0] if i < 2 else [0.0, 1.0])


def test_masks_set_only_the_target_class(folder_tree: FolderTree) -> None:
    ds = ImageFolderData(folder_tree.root, "val", 16, mask_root=folder_tree.mask_root)
    assert ds.has_masks
    assert not ds.transform.train
    stems = ["val/cat/cat_0", "val/dog/dog_0", "val/dog/dog_1"]  # dog_1 is an RGBA mask
    for i, key in enumerate(stems):
        sample = ds[i]
        target = ds.targets[i]
        masks = sample["masks"].numpy()
        assert masks.shape == (2, 16, 16)
        assert masks.dtype == np.bool_
        np.testing.assert_array_equal(masks[target], folder_tree.masks[key], err_msg=key)
        assert not masks[1 - target].any()


def test_training_split_with_masks_is_augmented_and_batches(folder_tree: FolderTree) -> None:
    ds = ImageFolderData(folder_tree.root, "train", 24, mask_root=folder_tree.mask_root)
    assert ds.transform.train
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 24, 24)
    assert batch["labels"].shape == (3, 2)
    assert batch["masks"].shape == (3, 2, 24, 24)
    assert batch["index"].tolist() == [0, 1, 2]
    # Only the target channel can be set.
    assert not batch["masks"][torch.arange(3), 1 - batch["labels"].argmax(1)].any()


def test_explicit_classes_fix_the_order(folder_tree: FolderTree) -> None:
    ds = ImageFolderData(folder_tree.root, "val", 16, classes=["dog", "cat", "zebra"])
    assert ds.classes == ("dog", "cat", "zebra")
    assert ds.targets == (0, 0, 1)  # samples follow the class order
    assert ds[2]["labels"].tolist() == [0.0, 1.0, 0.0]
    assert ds.samples[2][0].parent.name == "cat"
    with pytest.raises(ValueError, match=r"class folder .*dog: must be one of cat, got 'dog'"):
        ImageFolderData(folder_tree.root, "val", 16, classes=["cat"])


def test_missing_split_mask_folder_and_mask_file(folder_tree: FolderTree) -> None:
    with pytest.raises(FileNotFoundError, match="image folder split not found") as info:
        ImageFolderData(folder_tree.root, "test", 16)
    assert str(folder_tree.root / "test") in str(info.value)
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        ImageFolderData(folder_tree.root, "val", 16, mask_root=folder_tree.root / "nowhere")
    missing = folder_tree.mask_root / "val" / "cat" / "cat_0.png"
    missing.unlink()
    ds = ImageFolderData(folder_tree.root, "val", 16, mask_root=folder_tree.mask_root)
    with pytest.raises(FileNotFoundError, match="mask not found") as info:
        ds[0]
    assert str(missing) in str(info.value)


def test_invalid_options(folder_tree: FolderTree) -> None:
    with pytest.raises(ValueError, match="split: must be a plain folder name"):
        ImageFolderData(folder_tree.root, "../val", 16)
    with pytest.raises(ValueError, match="image_size: must be a positive integer, got 0"):
        ImageFolderData(folder_tree.root, "val", 0)
    with pytest.raises(ValueError, match="classes: must be a list of distinct names"):
        ImageFolderData(folder_tree.root, "val", 16, classes=["cat", "cat"])
