"""Tests of the final-evaluation artifacts: per-sample Parquet, overlay maps and their drawing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from analysis.report.plots import draw_overlays, draw_trial_overlay
from trainables.attribution_methods import grad_cam_map
from trainables.data import ShapesDataset
from trainables.evaluation import evaluate
from trainables.models import build_model
from trainables.overlays import (
    OverlayMaps,
    capture_overlay_maps,
    load_overlay_maps,
    save_overlay_maps,
)
from trainables.trial_artifacts import (
    PER_SAMPLE_FILE,
    TRIAL_ARTIFACTS,
    per_sample_table,
    write_final_artifacts,
)

IMAGE_SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, image_size=IMAGE_SIZE, width_divisor=8)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def dataset() -> ShapesDataset:
    return ShapesDataset("val", size=12, image_size=IMAGE_SIZE)


def test_per_sample_table_turns_class_sets_into_index_lists() -> None:
    table = per_sample_table(
        {
            "index": np.array([4, 5]),
            "predicted": np.array([[True, False, True], [False, False, False]]),
        }
    )
    assert table.column("index").to_pylist() == [4, 5]
    assert table.column("predicted").to_pylist() == [[0, 2], []]


def test_overlay_maps_explain_the_teachers_top1_class(dataset, tmp_path: Path) -> None:
    student, teacher = _model("vgg11_bn", 1), _model("resnet18", 2)
    teacher.train()  # a mode to restore
    maps = capture_overlay_maps(student, teacher, dataset, count=5)
    assert teacher.training
    assert not student.training
    images = torch.stack([dataset[i]["image"] for i in range(5)])
    with torch.no_grad():
        targets = teacher.eval()(images).argmax(dim=1)
    np.testing.assert_array_equal(maps.targets, targets.numpy())
    expected = grad_cam_map(student, images, targets)
    expected = expected / expected.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    np.testing.assert_allclose(maps.student, expected.numpy(), atol=1e-6)
    assert maps.teacher.shape == (5, IMAGE_SIZE, IMAGE_SIZE)
    assert maps.images.shape == (5, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert maps.images.dtype == np.uint8
    assert maps.class_names == dataset.classes
    back = load_overlay_maps(save_overlay_maps(maps, tmp_path / "maps.npz"))
    np.testing.assert_array_equal(back.images, maps.images)
    np.testing.assert_allclose(back.student, maps.student, atol=1e-3)  # stored as float16
    assert back.class_names == maps.class_names
    png = draw_overlays(
        back,
        [("teacher", back.teacher), ("student", back.student)],
        tmp_path / "grid.png",
        title="t",
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trial_png = draw_trial_overlay(tmp_path / "maps.npz", tmp_path / "trial.png")
    assert trial_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_overlays_refuses_maps_of_other_images(dataset, tmp_path: Path) -> None:
    maps = capture_overlay_maps(_model("vgg11_bn", 1), None, dataset, count=3)
    assert maps.teacher.shape[0] == 0
    with pytest.raises(ValueError, match="'x' must hold maps of the 3 images, got 2"):
        draw_overlays(maps, [("x", maps.student[:2])], tmp_path / "grid.png")
    with pytest.raises(ValueError, match="count: must be a positive integer, got 0"):
        capture_overlay_maps(_model("vgg11_bn", 1), None, dataset, count=0)


def test_final_artifacts_hold_every_sample_and_further_metrics(dataset, tmp_path: Path) -> None:
    student, teacher = _model("vgg11_bn", 1), _model("resnet18", 2)
    loader = DataLoader(dataset, batch_size=5)
    metrics = write_final_artifacts(
        student,
        teacher,
        loader,
        tmp_path,
        multi_label=True,
        attribution_methods=("ebp",),
        overlay_images=4,
    )
    reference = evaluate(student, loader, teacher=teacher, attribution_methods=("ebp",))
    assert metrics == {k: v for k, v in reference.metrics.items() if k.endswith("_ebp")}
    assert set(metrics) == {"attr_auc_ebp", "point_acc_ebp", "attr_cos_ebp", "attr_l2_ebp"}
    table = pq.read_table(tmp_path / PER_SAMPLE_FILE)
    assert table.num_rows == len(dataset)
    np.testing.assert_array_equal(
        table.column("attr_cos_ebp").to_numpy(), reference.per_sample["attr_cos_ebp"]
    )
    assert "attr_cos" in table.schema.names  # Grad-CAM's, from the same file
    assert set(TRIAL_ARTIFACTS) - {"model.pt2"} == {p.name for p in tmp_path.iterdir()}
    maps: OverlayMaps = load_overlay_maps(tmp_path / "attribution_maps.npz")
    assert maps.student.shape[0] == 4
