from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainables.data.normalization import IMAGE_MEAN, IMAGE_STD
from trainables.data.voc import VOC_CLASSES, VOCMultiLabel

from .conftest import VOID, VOCTree


def positives(labels: torch.Tensor) -> set[str]:
    return {VOC_CLASSES[i] for i in torch.nonzero(labels).flatten().tolist()}


def test_classes_are_the_20_voc_classes_in_standard_order(voc_tree: VOCTree) -> None:
    ds = VOCMultiLabel(voc_tree.root, "val", 32)
    assert ds.classes[0] == "aeroplane"
    assert ds.classes[-1] == "tvmonitor"
    assert ds.num_classes == 20
    assert ds.multi_label
    assert not ds.has_masks


def test_train_and_val_ids_and_labels_come_from_main_split_files_and_xml(
    voc_tree: VOCTree,
) -> None:
    train = VOCMultiLabel(voc_tree.root, "train", 32)
    assert train.ids == ("2008_000003", "2008_000004")
    # The difficult car is shadowed by a non-difficult one: car stays positive.
    assert positives(train.labels_of(0)) == {"car", "bicycle"}
    assert positives(train.labels_of(1)) == {"bottle"}
    val = VOCMultiLabel(voc_tree.root, "val", 32)
    assert val.ids == ("2008_000001", "2008_000002")
    sample = val[1]
    assert positives(sample["labels"]) == {"aeroplane"}
    assert sample["labels"].dtype == torch.float32
    assert sample["labels"].sum().item() == 1.0  # two aeroplanes, one label


@pytest.mark.parametrize(("include_difficult", "expected"), [(False, set()), (True, {"cat"})])
def test_class_present_only_through_difficult_objects(
    voc_tree: VOCTree, include_difficult: bool, expected: set[str]
) -> None:
    ds = VOCMultiLabel(voc_tree.root, "val", 32, include_difficult=include_difficult)
    assert positives(ds.labels_of(0)) == {"person", "dog"} | expected


def test_seg_val_masks_equal_painted_regions_without_resampling(voc_tree: VOCTree) -> None:
    ds = VOCMultiLabel(voc_tree.root, "seg_val", 32)
    assert ds.has_masks
    assert len(ds) == 2
    for index, image_id in enumerate(ds.ids):
        seg = voc_tree.images[image_id].seg
        assert seg is not None
        sample = ds[index]
        masks = sample["masks"].numpy()
        assert masks.shape == (20, 32, 32)
        for c, name in enumerate(VOC_CLASSES):
            if sample["labels"][c] > 0:
                np.testing.assert_array_equal(masks[c], seg == c + 1, err_msg=name)
                assert masks[c].any()
            else:
                assert not masks[c].any(), name


def test_seg_val_void_border_belongs_to_no_class(voc_tree: VOCTree) -> None:
    ds = VOCMultiLabel(voc_tree.root, "seg_val", 32, include_difficult=True)
    seg = voc_tree.images["2008_000001"].seg
    assert seg is not None
    masks = ds[0]["masks"]
    void = torch.from_numpy(seg == VOID)
    assert void.sum() > 0
    assert not masks[:, void].any()
    assert not masks[:, torch.from_numpy(seg == 0)].any()
    # Classes never overlap either.
    assert masks.sum(0).max().item() == 1


def test_seg_val_masks_only_for_labelled_classes(voc_tree: VOCTree) -> None:
    cat = VOC_CLASSES.index("cat")
    seg = voc_tree.images["2008_000001"].seg
    assert seg is not None
    default = VOCMultiLabel(voc_tree.root, "seg_val", 32)[0]
    assert default["labels"][cat] == 0
    assert not default["masks"][cat].any()  # segmented, but difficult-only: dropped
    with_difficult = VOCMultiLabel(voc_tree.root, "seg_val", 32, include_difficult=True)[0]
    assert with_difficult["labels"][cat] == 1
    np.testing.assert_array_equal(with_difficult["masks"][cat].numpy(), seg == cat + 1)


def test_seg_val_resize_keeps_masks_nearest(voc_tree: VOCTree) -> None:
    ds = VOCMultiLabel(voc_tree.root, "seg_val", 64)
    sample = ds[0]
    assert sample["image"].shape == (3, 64, 64)
    assert sample["image"].dtype == torch.float32
    assert sample["masks"].shape == (20, 64, 64)
    assert sample["masks"].dtype == torch.bool
    seg = voc_tree.images["2008_000001"].seg
    assert seg is not None
    person = VOC_CLASSES.index("person")
    # Exact 2x nearest upsampling: every source pixel becomes a 2x2 block.
    expected = np.repeat(np.repeat(seg == person + 1, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(sample["masks"][person].numpy(), expected)


def test_training_transform_outputs_fixed_size_even_for_non_square_images(
    voc_tree: VOCTree,
) -> None:
    ds = VOCMultiLabel(voc_tree.root, "train", 48)
    assert ds.transform.train
    torch.manual_seed(0)
    for index in range(len(ds)):
        sample = ds[index]
        assert set(sample) == {"image", "labels", "index"}
        assert sample["image"].shape == (3, 48, 48)
        assert sample["image"].dtype == torch.float32
        assert type(sample["image"]) is torch.Tensor  # not a tv_tensors subclass
        assert sample["index"] == index


def test_eval_transform_is_deterministic(voc_tree: VOCTree) -> None:
    ds = VOCMultiLabel(voc_tree.root, "val", 40)
    assert not ds.transform.train
    torch.testing.assert_close(ds[0]["image"], ds[0]["image"], rtol=0, atol=0)
    assert ds[0]["image"].shape == (3, 40, 40)


def test_images_are_normalised_with_the_shared_statistics(voc_tree: VOCTree) -> None:
    ds = VOCMultiLabel(voc_tree.root, "train", 32, augment=False)
    image = ds[1]["image"]  # the uniform (124, 116, 104) image
    colour = voc_tree.images["2008_000004"].colour
    assert colour is not None
    expected = (torch.tensor(colour) / 255 - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    # JPEG may move a uniform colour by a level or two.
    tolerance = 3 / 255 / min(IMAGE_STD)
    assert (image - expected.view(3, 1, 1)).abs().max().item() < tolerance


def test_dataloader_collates_seg_val_batches(voc_tree: VOCTree) -> None:
    ds = VOCMultiLabel(voc_tree.root, "seg_val", 32)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 32, 32)
    assert batch["labels"].shape == (2, 20)
    assert batch["masks"].shape == (2, 20, 32, 32)
    assert batch["masks"].dtype == torch.bool
    assert batch["index"].tolist() == [0, 1]


def test_missing_root_names_path_and_layout(voc_tree: VOCTree) -> None:
    missing = voc_tree.root / "nowhere"
    with pytest.raises(FileNotFoundError, match="VOC root folder not found") as info:
        VOCMultiLabel(missing, "train", 32)
    assert str(missing) in str(info.value)
    assert "VOCdevkit/VOC2012" in str(info.value)


def test_root_given_as_voc2012_folder_gets_a_hint(voc_tree: VOCTree) -> None:
    with pytest.raises(FileNotFoundError, match="VOC2012 folder itself"):
        VOCMultiLabel(voc_tree.voc_dir, "train", 32)
    with pytest.raises(FileNotFoundError, match="VOCdevkit folder"):
        VOCMultiLabel(voc_tree.root / "VOCdevkit", "train", 32)


def test_missing_split_file_is_named(voc_tree: VOCTree) -> None:
    split_file = voc_tree.voc_dir / "ImageSets" / "Segmentation" / "val.txt"
    split_file.unlink()
    with pytest.raises(FileNotFoundError, match="split file not found") as info:
        VOCMultiLabel(voc_tree.root, "seg_val", 32)
    assert str(split_file) in str(info.value)


def test_missing_segmentation_folder_is_named(voc_tree: VOCTree) -> None:
    shutil.rmtree(voc_tree.voc_dir / "SegmentationClass")
    VOCMultiLabel(voc_tree.root, "val", 32)  # not needed without masks
    with pytest.raises(FileNotFoundError, match="SegmentationClass"):
        VOCMultiLabel(voc_tree.root, "seg_val", 32)


def test_missing_image_is_named_when_loaded(voc_tree: VOCTree) -> None:
    image = voc_tree.voc_dir / "JPEGImages" / "2008_000004.jpg"
    image.unlink()
    ds = VOCMultiLabel(voc_tree.root, "train", 32)
    ds[0]
    with pytest.raises(FileNotFoundError, match="VOC image not found") as info:
        ds[1]
    assert str(image) in str(info.value)


def test_unknown_split_and_bad_options_are_value_errors(voc_tree: VOCTree) -> None:
    with pytest.raises(ValueError, match="split: must be one of train, val, seg_val, got 'test'"):
        VOCMultiLabel(voc_tree.root, "test", 32)
    with pytest.raises(ValueError, match="image_size: must be a positive integer, got -3"):
        VOCMultiLabel(voc_tree.root, "train", -3)
    with pytest.raises(ValueError, match="include_difficult: must be true or false"):
        VOCMultiLabel(voc_tree.root, "train", 32, include_difficult=1)  # type: ignore[arg-type]


def test_unknown_class_name_in_annotation(voc_tree: VOCTree) -> None:
    xml = voc_tree.voc_dir / "Annotations" / "2008_000004.xml"
    xml.write_text(xml.read_text().replace("bottle", "unicorn"))
    ds = VOCMultiLabel(voc_tree.root, "train", 32)
    with pytest.raises(ValueError, match="must be one of the 20 VOC classes, got 'unicorn'"):
        ds.labels_of(1)


def test_annotations_with_entities_are_refused(voc_tree: VOCTree) -> None:
    xml = voc_tree.voc_dir / "Annotations" / "2008_000004.xml"
    xml.write_text('<!DOCTYPE a [<!ENTITY e "bottle">]>\n' + xml.read_text())
    ds = VOCMultiLabel(voc_tree.root, "train", 32)
    with pytest.raises(ValueError, match="DTD"):
        ds.labels_of(1)


def test_mask_with_unexpected_values_is_refused(voc_tree: VOCTree) -> None:
    from PIL import Image

    bad = np.full((32, 32), 42, dtype=np.uint8)
    Image.fromarray(bad, mode="L").save(voc_tree.voc_dir / "SegmentationClass" / "2008_000002.png")
    ds = VOCMultiLabel(voc_tree.root, "seg_val", 32)
    with pytest.raises(ValueError, match="got 42"):
        ds[1]


def test_negative_and_out_of_range_indices(voc_tree: VOCTree) -> None:
    ds = VOCMultiLabel(voc_tree.root, "val", 32)
    assert ds[-1]["index"] == 1
    with pytest.raises(IndexError):
        ds[2]
