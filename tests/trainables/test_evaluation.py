"""Tests of trainables.evaluation against slow, independent per-pair references (sklearn)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from trainables.attribution import grad_cam
from trainables.data import ShapesDataset
from trainables.evaluation import PER_SAMPLE_COLUMNS, Evaluation, evaluate
from trainables.losses import task_loss
from trainables.metric_names import METRICS
from trainables.models import build_model, matched_layer

IMAGE_SIZE = 64
NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


def _tiny(arch: str, seed: int) -> nn.Module:
    """A small random model whose logits spread around 0, so about half the classes fire."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, width_divisor=8)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.5)
            nn.init.normal_(module.bias, 0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these tensors are tiny, and on a busy 2-core machine every torch op's
    thread barrier can stall (measured: 0.5 s with one thread, up to 27 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batches32() -> list[dict[str, Any]]:
    dataset = ShapesDataset("val", size=24, image_size=IMAGE_SIZE)
    return list(DataLoader(dataset, batch_size=8))


@pytest.fixture(scope="module")
def batches(batches32) -> list[dict[str, Any]]:
    """float64 images. Batched and one-image convolutions round differently in float32 (about
    1e-6), enough to swap two nearly tied pixels of a map; in float64 the batched evaluation
    and the one-pair-at-a-time reference agree to rounding, so the protocol can be checked
    exactly."""
    return [{**batch, "image": batch["image"].double()} for batch in batches32]


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    return _tiny("vgg11_bn", 1).double()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return _tiny("resnet18", 2).double()


def _without_masks(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in batch.items() if k != "masks"} for batch in batches]


# --------------------------------------------------------------------------------------------
# the slow reference: one image and one class at a time, sklearn for every score
# --------------------------------------------------------------------------------------------


class Reference:
    """Per-pair results of the paper's protocol, computed the slow way."""

    def __init__(self) -> None:
        self.logits: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.aucs: list[float] = []
        self.hits: list[bool] = []
        self.cos: list[float] = []
        self.l2: list[float] = []
        self.image_auc: list[float] = []
        self.image_pairs: list[int] = []


def _cam(model: nn.Module, image: Tensor, cls: int) -> Tensor:
    cam = grad_cam(model, matched_layer(model), image[None], torch.tensor([cls]))
    up = F.interpolate(cam[None], size=image.shape[-2:], mode="bilinear", align_corners=False)
    return up[0, 0]


def _reference(
    model: nn.Module,
    batches: list[dict[str, Any]],
    *,
    teacher: nn.Module | None = None,
    multi_label: bool = True,
    threshold: float = 0.5,
) -> Reference:
    ref = Reference()
    model.eval()
    if teacher is not None:
        teacher.eval()
    for batch in batches:
        for i in range(batch["image"].shape[0]):
            image, labels = batch["image"][i], batch["labels"][i]
            with torch.no_grad():
                logits = model(image[None])[0]
            ref.logits.append(logits)
            ref.labels.append(labels)
            if multi_label:
                predicted = [c for c in range(NUM_CLASSES) if torch.sigmoid(logits[c]) >= threshold]
            else:
                predicted = [int(logits.argmax())]
            pairs = [c for c in predicted if labels[c] > 0.5]
            ref.image_pairs.append(len(pairs))
            aucs = []
            for c in pairs:
                cam = _cam(model, image, c)
                if "masks" in batch:
                    mask = batch["masks"][i, c].numpy().ravel()
                    flat = cam.numpy().ravel()
                    if mask.any() and not mask.all():
                        aucs.append(float(roc_auc_score(mask, flat)))
                    if mask.any():
                        ref.hits.append(bool(mask[int(np.argmax(flat))]))
                if teacher is not None:
                    t_cam = _cam(teacher, image, c)
                    a = t_cam.double().ravel()
                    b = cam.double().ravel()
                    ref.cos.append(float(F.cosine_similarity(a, b, dim=0)))
                    ref.l2.append(float((F.normalize(a, dim=0) - F.normalize(b, dim=0)).norm()))
            ref.aucs += aucs
            ref.image_auc.append(float(np.mean(aucs)) * 100 if aucs else math.nan)
    return ref


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


def _pairs_to_sanity(ref: Reference) -> None:
    # The test would prove little if the random models gave no or trivial pairs.
    assert len(ref.aucs) >= 10
    assert 0 < sum(ref.hits) < len(ref.hits)


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_attribution_and_task_metrics_match_slow_reference(arch, request, batches) -> None:
    model = request.getfixturevalue(arch)
    result = evaluate(model, batches)
    ref = _reference(model, batches)
    _pairs_to_sanity(ref)

    assert result.metrics["attr_auc"] == pytest.approx(100 * np.mean(ref.aucs), abs=1e-9)
    assert result.metrics["point_acc"] == 100 * np.mean(ref.hits)
    np.testing.assert_allclose(result.per_sample["attr_auc"], ref.image_auc, atol=1e-9)
    np.testing.assert_array_equal(result.per_sample["num_pairs"], ref.image_pairs)

    logits = torch.stack(ref.logits)
    labels = torch.stack(ref.labels)
    y = labels.numpy().astype(bool)
    scores = logits.numpy()
    per_class = [
        average_precision_score(y[:, c], scores[:, c]) for c in range(NUM_CLASSES) if y[:, c].any()
    ]
    assert result.metrics["map"] == pytest.approx(100 * np.mean(per_class), abs=1e-9)
    rows = y.any(axis=1)
    samples = average_precision_score(y[rows], scores[rows], average="samples")
    assert result.metrics["map_samples"] == pytest.approx(100 * samples, abs=1e-9)
    predicted = torch.sigmoid(logits).numpy() >= 0.5
    f1 = f1_score(y, predicted, average="samples", zero_division=1.0)
    assert result.metrics["f1"] == pytest.approx(100 * f1, abs=1e-9)
    assert result.metrics["loss"] == pytest.approx(float(task_loss(logits, labels)), rel=1e-5)
    np.testing.assert_array_equal(result.per_sample["correct"], (predicted == y).all(axis=1))
    assert "top1" not in result.metrics
    assert set(result.metrics) <= set(METRICS)


def test_float32_agrees_with_reference_to_rounding(batches32) -> None:
    model = _tiny("vgg11_bn", 1)
    result = evaluate(model, batches32)
    ref = _reference(model, batches32)
    # Batched convolutions round differently from one-image ones (~1e-6), which may swap a few
    # nearly tied pixels; the protocol is checked exactly in float64 above.
    assert result.metrics["attr_auc"] == pytest.approx(100 * np.mean(ref.aucs), abs=0.01)
    assert result.metrics["point_acc"] == pytest.approx(
        100 * np.mean(ref.hits), abs=100 / len(ref.hits) + 1e-9
    )


def test_teacher_maps_match_reference_across_architectures(vgg, resnet, batches) -> None:
    # Different matched-layer widths and networks: maps are compared at image resolution.
    result = evaluate(vgg, batches, teacher=resnet)
    ref = _reference(vgg, batches, teacher=resnet)
    assert len(ref.cos) >= 10
    assert result.metrics["attr_cos"] == pytest.approx(np.mean(ref.cos), abs=1e-9)
    assert result.metrics["attr_l2"] == pytest.approx(np.mean(ref.l2), abs=1e-9)
    # Attribution against masks is the student's alone: unchanged by the teacher.
    assert result.metrics["attr_auc"] == evaluate(vgg, batches).metrics["attr_auc"]
    with torch.no_grad():
        agree = [
            (
                (torch.sigmoid(vgg(b["image"])) >= 0.5)
                == (torch.sigmoid(resnet(b["image"])) >= 0.5)
            ).all(1)
            for b in batches
        ]
    np.testing.assert_array_equal(result.per_sample["teacher_agree"], torch.cat(agree).numpy())


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_teacher_equal_to_student_gives_identical_maps(arch, request, batches) -> None:
    model = request.getfixturevalue(arch)
    result = evaluate(model, batches, teacher=copy.deepcopy(model))
    assert result.metrics["attr_cos"] == pytest.approx(1.0, abs=1e-9)
    assert result.metrics["attr_l2"] == pytest.approx(0.0, abs=1e-7)
    assert result.per_sample["teacher_agree"].all()


def test_single_label_reports_top1_and_argmax_pairs(vgg, batches) -> None:
    # One-hot targets: the first labelled class of each image.
    single = []
    for batch in batches:
        first = batch["labels"].argmax(dim=1)
        single.append({**batch, "labels": F.one_hot(first, NUM_CLASSES).float()})
    result = evaluate(vgg, single, multi_label=False)
    ref = _reference(vgg, single, multi_label=False)
    logits = torch.stack(ref.logits)
    targets = torch.stack(ref.labels).argmax(dim=1)
    correct = (logits.argmax(dim=1) == targets).numpy()
    assert 0 < correct.sum() < len(correct)
    assert result.metrics["top1"] == pytest.approx(100 * correct.mean(), abs=1e-9)
    assert result.metrics["loss"] == pytest.approx(
        float(F.cross_entropy(logits, targets)), rel=1e-9
    )
    assert not {"map", "map_samples", "f1"} & set(result.metrics)
    np.testing.assert_array_equal(result.per_sample["correct"], correct)
    np.testing.assert_array_equal(result.per_sample["num_pairs"], correct.astype(np.int64))
    assert result.metrics["attr_auc"] == pytest.approx(100 * np.mean(ref.aucs), abs=1e-9)
    assert result.metrics["point_acc"] == 100 * np.mean(ref.hits)


def test_without_masks_attribution_against_masks_is_absent(vgg, resnet, batches) -> None:
    plain = evaluate(vgg, _without_masks(batches))
    assert set(plain.metrics) == {"loss", "map", "map_samples", "f1"}
    assert set(plain.per_sample) == {"index", "loss", "correct", "num_pairs", "predicted"}
    with_masks = evaluate(vgg, batches)
    for name in plain.metrics:
        assert plain.metrics[name] == with_masks.metrics[name]
    for name in plain.per_sample:
        np.testing.assert_array_equal(plain.per_sample[name], with_masks.per_sample[name])
    # The teacher comparison needs no masks.
    taught = evaluate(vgg, _without_masks(batches), teacher=resnet)
    assert set(taught.metrics) == {
        "loss",
        "map",
        "map_samples",
        "f1",
        "attr_cos",
        "attr_l2",
        "pie_fraction",
    }
    full = evaluate(vgg, batches, teacher=resnet)
    assert taught.metrics["attr_cos"] == full.metrics["attr_cos"]
    assert set(full.per_sample) == set(PER_SAMPLE_COLUMNS)


def test_no_pair_gives_nan_attribution_with_the_same_keys(vgg, resnet, batches) -> None:
    # At this threshold no class is predicted, so no batch has a pair.
    result = evaluate(vgg, batches, teacher=resnet, threshold=1 - 1e-12)
    for name in ("attr_auc", "point_acc", "attr_cos", "attr_l2"):
        assert math.isnan(result.metrics[name])
        assert np.isnan(result.per_sample[name]).all()
    assert (result.per_sample["num_pairs"] == 0).all()
    assert result.metrics["f1"] == pytest.approx(
        100
        * f1_score(
            np.vstack([b["labels"] for b in batches]),
            np.zeros((24, NUM_CLASSES)),
            average="samples",
            zero_division=1.0,
        )
    )


def test_unlabelled_images_batches_and_degenerate_masks(vgg, batches) -> None:
    edited = [{**b, "labels": b["labels"].clone(), "masks": b["masks"].clone()} for b in batches]
    # The first image of every batch and the whole middle batch lose their labels: no pairs.
    for batch in edited:
        batch["labels"][0] = 0
        batch["masks"][0] = False
    edited[1]["labels"].zero_()
    edited[1]["masks"].zero_()
    # A positive class without mask pixels (VOC: object only in the 255 border) counts for
    # neither score; a mask covering the whole image has no ROC-AUC but a pointing hit.
    last = edited[2]
    last["masks"][1] = False
    last["masks"][4] = last["labels"][4][:, None, None] > 0.5
    result = evaluate(vgg, edited)
    ref = _reference(vgg, edited)
    pairs = result.per_sample["num_pairs"]
    assert pairs[::8].tolist() == [0, 0, 0]
    assert (pairs[8:16] == 0).all()
    assert pairs[17] > 0  # the degenerate masks are really exercised
    assert pairs[20] > 0
    assert np.isnan(result.per_sample["attr_auc"][[0, 8, 16, 17, 20]]).all()
    assert np.isnan(result.per_sample["point_acc"][[0, 8, 16, 17]]).all()
    assert result.per_sample["point_acc"][20] == 100.0
    assert result.metrics["attr_auc"] == pytest.approx(100 * np.mean(ref.aucs), abs=1e-9)
    assert result.metrics["point_acc"] == 100 * np.mean(ref.hits)


def test_modes_are_restored_and_parameters_untouched(batches) -> None:
    student = _tiny("vgg11_bn", 3).double().train()
    teacher = _tiny("resnet18", 4).double().eval()
    student.features[1].eval()  # a frozen BatchNorm inside a training model
    before = {name: m.training for name, m in student.named_modules()}
    state = copy.deepcopy(student.state_dict())
    train_result = evaluate(student, batches, teacher=teacher, max_batches=1)
    assert {name: m.training for name, m in student.named_modules()} == before
    assert not any(m.training for m in teacher.modules())
    for name, value in student.state_dict().items():
        assert torch.equal(value, state[name]), name  # BN running stats not updated
    assert all(p.grad is None for p in student.parameters())
    # Evaluated in eval mode: same as evaluating the eval-mode model.
    eval_result = evaluate(student.eval(), batches, teacher=teacher, max_batches=1)
    assert train_result.metrics == eval_result.metrics


def test_per_sample_rows_and_max_batches(vgg, batches) -> None:
    result = evaluate(vgg, batches, max_batches=2)
    assert len(result.per_sample["index"]) == 16
    np.testing.assert_array_equal(result.per_sample["index"], np.arange(16))
    lengths = {len(v) for v in result.per_sample.values()}
    assert lengths == {16}
    assert result.per_sample["index"].dtype == np.int64
    assert result.per_sample["correct"].dtype == np.bool_
    # Without "index" in the batches the running position stands in.
    unindexed = [{k: v for k, v in b.items() if k != "index"} for b in batches]
    np.testing.assert_array_equal(evaluate(vgg, unindexed).per_sample["index"], np.arange(24))
    # Per-image losses average to the loss.
    full = evaluate(vgg, batches)
    assert full.per_sample["loss"].mean() == pytest.approx(full.metrics["loss"], rel=1e-12)
    assert isinstance(full, Evaluation)


def test_deterministic_and_independent_of_batch_size(vgg, batches) -> None:
    first = evaluate(vgg, batches, teacher=vgg)
    second = evaluate(vgg, batches, teacher=vgg)
    assert first.metrics == second.metrics
    dataset = ShapesDataset("val", size=24, image_size=IMAGE_SIZE)
    rebatched = [{**b, "image": b["image"].double()} for b in DataLoader(dataset, batch_size=5)]
    other = evaluate(vgg, rebatched)
    for name in ("attr_auc", "point_acc", "map", "map_samples", "f1", "loss"):
        assert other.metrics[name] == pytest.approx(first.metrics[name], abs=1e-9)


def test_dataloader_on_the_dataset_directly(batches32) -> None:
    model = _tiny("resnet18", 5)
    loader = DataLoader(ShapesDataset("val", size=24, image_size=IMAGE_SIZE), batch_size=8)
    result = evaluate(model, loader, device="cpu")
    assert result.metrics == evaluate(model, batches32).metrics


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, "threshold: must be in (0, 1)"),
        ({"threshold": 1.0}, "threshold: must be in (0, 1)"),
        ({"max_batches": 0}, "max_batches: must be a positive integer"),
    ],
)
def test_rejects_bad_arguments(vgg, batches, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(vgg, batches, **kwargs)


def test_rejects_empty_loader_and_inconsistent_masks(vgg, batches) -> None:
    with pytest.raises(ValueError, match="yielded no batch"):
        evaluate(vgg, [])
    mixed = [batches[0], *_without_masks(batches[1:])]
    with pytest.raises(ValueError, match="batch 1 lacks 'masks'"):
        evaluate(vgg, mixed)


def test_threshold_is_inclusive(batches) -> None:
    # Zero logits give probability exactly 0.5: predicted at the default threshold.
    model = _tiny("resnet18", 6).double()
    head = model.get_submodule("fc")
    assert isinstance(head, nn.Linear)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    result = evaluate(model, batches)
    labels = np.vstack([b["labels"].numpy() for b in batches])
    np.testing.assert_array_equal(result.per_sample["num_pairs"], labels.sum(axis=1))
    assert result.metrics["f1"] == pytest.approx(
        100 * f1_score(labels, np.ones_like(labels), average="samples", zero_division=1.0)
    )


# --------------------------------------------------------------------------------------------
# PIEs and further attribution methods
# --------------------------------------------------------------------------------------------


def test_pie_columns_follow_both_models_predictions(vgg, batches) -> None:
    # A teacher close to the student: they agree on some images and not on others.
    resnet = copy.deepcopy(vgg)
    last = [m for m in resnet.modules() if isinstance(m, nn.Linear)][-1]
    images = torch.cat([b["image"] for b in batches])
    with torch.no_grad():
        # Class 0 moves to the other side of the threshold on about half the images.
        last.bias[0] -= vgg(images)[:, 0].median()
    result = evaluate(vgg, batches, teacher=resnet)
    labels = torch.cat([b["labels"] for b in batches]) > 0.5
    with torch.no_grad():
        student = torch.sigmoid(vgg(images)) >= 0.5
        teacher = torch.sigmoid(resnet(images)) >= 0.5
    np.testing.assert_array_equal(result.per_sample["predicted"], student.numpy())
    np.testing.assert_array_equal(result.per_sample["teacher_predicted"], teacher.numpy())
    agree = (student == teacher).all(dim=1).numpy()
    np.testing.assert_array_equal(result.per_sample["teacher_agree"], agree)
    np.testing.assert_array_equal(
        result.per_sample["teacher_correct"], (teacher == labels).all(dim=1).numpy()
    )
    assert result.metrics["pie_fraction"] == pytest.approx(1 - agree.mean())
    assert 0 < result.metrics["pie_fraction"] < 1  # both kinds present: the test can tell
    assert evaluate(vgg, batches, teacher=vgg).metrics["pie_fraction"] == 0.0


@pytest.mark.parametrize("method", ["lrp", "ebp"])
def test_further_method_scores_match_a_pair_by_pair_reference(
    method: str, vgg, resnet, batches32
) -> None:
    from trainables.attribution_methods import ATTRIBUTION_METHODS

    student, teacher = copy.deepcopy(vgg).float(), copy.deepcopy(resnet).float()
    both = evaluate(student, batches32, teacher=teacher, attribution_methods=("grad_cam", method))
    alone = evaluate(student, batches32, teacher=teacher)
    for name in ("attr_auc", "point_acc", "attr_cos", "attr_l2"):
        assert both.metrics[name] == alone.metrics[name]  # Grad-CAM's are unchanged
    explain = ATTRIBUTION_METHODS[method]
    aucs, hits, cosines = [], [], []
    for batch in batches32:
        with torch.no_grad():
            predicted = torch.sigmoid(student(batch["image"])) >= 0.5
        for row in range(batch["image"].shape[0]):
            for cls in (predicted[row] & (batch["labels"][row] > 0.5)).nonzero().flatten():
                image, target = batch["image"][row : row + 1], cls.view(1)
                ours = explain(student, image, target)[0].double()
                theirs = explain(teacher, image, target)[0].double()
                mask = batch["masks"][row, cls].numpy()
                if 0 < mask.sum() < mask.size:
                    aucs.append(roc_auc_score(mask.ravel(), ours.numpy().ravel()))
                if mask.any():
                    first = int(ours.flatten().argmax())
                    hits.append(bool(mask.ravel()[first]))
                cosines.append(float(F.cosine_similarity(ours.flatten(), theirs.flatten(), 0)))
    assert len(aucs) > 5
    assert both.metrics[f"attr_auc_{method}"] == pytest.approx(100 * np.mean(aucs), abs=1e-6)
    assert both.metrics[f"point_acc_{method}"] == pytest.approx(100 * np.mean(hits))
    assert both.metrics[f"attr_cos_{method}"] == pytest.approx(np.mean(cosines), abs=1e-5)
    assert set(both.metrics) <= set(METRICS)
    assert np.isfinite(both.per_sample[f"attr_cos_{method}"]).sum() > 0


def test_unknown_attribution_method_is_refused(vgg, batches) -> None:
    with pytest.raises(ValueError, match=r"attribution_methods: must be among .*\['gradcam'\]"):
        evaluate(vgg, batches, attribution_methods=("gradcam",))
