from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.trainables.reports import Reports
from trainables.attribution import grad_cam
from trainables.distillation import run_distillation
from trainables.matching import (
    MATCHING_KINDS,
    MatchingConfig,
    cosine_map_distance,
    matching_loss,
    normalized_map_distance,
    select_classes,
    teacher_targets,
)
from trainables.models import build_model, forward_features, forward_head, matched_layer
from trainables.trial import TrialSetup

ARCHS = ["vgg11_bn", "resnet18"]
#: Every kind that matches a map (all but ``none``).
MATCHED_KINDS = [kind for kind in MATCHING_KINDS if kind != "none"]


def _pair(arch: str, divisor: int = 4) -> tuple[nn.Module, nn.Module]:
    teacher = build_model(arch, num_classes=6, image_size=32, width_divisor=2).eval()
    student = build_model(arch, num_classes=6, image_size=32, width_divisor=divisor)
    return teacher, student


def _loss(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    config: MatchingConfig,
) -> torch.Tensor:
    targets = teacher_targets(teacher, images, labels, config)
    features = forward_features(student, images)
    return matching_loss(student, features, forward_head(student, features), targets, config)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", MATCHED_KINDS)
def test_loss_is_zero_for_identical_networks(arch: str, kind: str) -> None:
    teacher, _ = _pair(arch)
    images = torch.randn(4, 3, 32, 32)
    config = MatchingConfig(kind=kind)  # type: ignore[arg-type]
    loss = _loss(copy.deepcopy(teacher), teacher, images, None, config)
    assert loss.item() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", MATCHED_KINDS)
def test_gradients_reach_student_features_and_head_but_not_teacher(arch: str, kind: str) -> None:
    teacher, student = _pair(arch)
    images = torch.randn(4, 3, 32, 32)
    config = MatchingConfig(kind=kind, drop_p=0.3 if kind == "sswa" else 0.0)  # type: ignore[arg-type]
    loss = _loss(student, teacher, images, None, config)
    assert loss.item() > 1e-3
    loss.backward()
    first_conv = next(m for m in student.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0
    head = student.fc if arch.startswith("resnet") else student.classifier[0]
    if kind == "ewa":
        assert head.weight.grad is None  # EWA does not depend on the head.
    else:
        assert head.weight.grad is not None
        assert head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_maps_equal_grad_cam_of_its_top1_class(arch: str) -> None:
    teacher, _ = _pair(arch)
    images = torch.randn(5, 3, 32, 32)
    targets = teacher_targets(teacher, images, None, MatchingConfig(kind="swa"))
    top1 = teacher(images).argmax(1)
    torch.testing.assert_close(targets.classes[:, 0], top1)
    reference = grad_cam(teacher, matched_layer(teacher), images, top1)
    assert targets.maps is not None
    torch.testing.assert_close(targets.maps[:, 0], reference, rtol=1e-4, atol=1e-7)


MapDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _direct_cosine_distance(m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
    """1 - cos written out from its definition, maps [B, h, w] -> [B].

    With the loss's eps of 1e-12 inside each squared norm (what keeps an all-zero map finite):
    untrained VGG maps have squared norms near 1e-6, where leaving it out shows at 1e-6.
    """
    s, t = m_s.flatten(1), m_t.flatten(1)
    norms = (s.pow(2).sum(1) + 1e-12).sqrt() * (t.pow(2).sum(1) + 1e-12).sqrt()
    return 1.0 - (s * t).sum(1) / norms


#: kind -> the distance its definition uses, computed without the module's code.
DIRECT_DISTANCES: dict[str, MapDistance] = {
    "swa": normalized_map_distance,
    "gradcam_cos": _direct_cosine_distance,
}


def _naive_loss(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    distance: MapDistance = normalized_map_distance,
) -> torch.Tensor:
    """The definition, computed the slow way: full-network Grad-CAM per class."""
    distances = []
    for k in range(classes.shape[1]):
        m_s = grad_cam(student, matched_layer(student), images, classes[:, k], create_graph=True)
        m_t = grad_cam(teacher, matched_layer(teacher), images, classes[:, k])
        distances.append(distance(m_s, m_t))
    return torch.stack(distances, 1).mean(1).mean()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("kind", list(DIRECT_DISTANCES))
def test_head_only_gradients_equal_the_full_second_order_computation(
    arch: str, top_k: int, kind: str
) -> None:
    teacher, student = _pair(arch)
    # float64 and no dropout, so both computations see the same function to rounding.
    teacher, student = teacher.double(), student.double().eval()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    config = MatchingConfig(kind=kind, classes="topk", top_k=top_k)  # type: ignore[arg-type]
    ours = _loss(student, teacher, images, None, config)
    ours.backward()
    fast = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    student.zero_grad(set_to_none=True)
    classes = teacher(images).topk(top_k, dim=1).indices
    naive = _naive_loss(student, teacher, images, classes, DIRECT_DISTANCES[kind])
    naive.backward()
    slow = [p.grad for p in student.parameters() if p.grad is not None]
    torch.testing.assert_close(ours, naive, rtol=1e-9, atol=1e-12)
    # Every parameter but the last bias (maps do not depend on it) gets a gradient.
    assert len(fast) == len(slow) == len(list(student.parameters())) - 1
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_positive_label_selection_pads_and_masks() -> None:
    logits = torch.randn(3, 5)
    labels = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]).float()
    classes, valid = select_classes(logits, labels, MatchingConfig(classes="positives"))
    assert classes.shape == (3, 3)
    assert classes[0].tolist() == [1, 3, 4]
    assert classes[1, 0].item() == 0
    assert valid[1].tolist() == [True, False, False]
    assert not valid[2].any()


def test_positive_selection_loss_ignores_padding_and_images_without_labels() -> None:
    teacher, student = _pair("vgg11_bn")
    student.eval()
    images = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([[0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0], [0] * 6]).float()
    loss = _loss(student, teacher, images, labels, MatchingConfig(kind="swa", classes="positives"))
    per_image = [
        _naive_loss(student, teacher, images[:1], torch.tensor([[1, 3]])),
        _naive_loss(student, teacher, images[1:2], torch.tensor([[2]])),
    ]
    torch.testing.assert_close(loss, torch.stack(per_image).mean(), rtol=1e-5, atol=1e-6)


def test_sswa_drops_channels_and_equals_swa_at_zero_drop() -> None:
    teacher, student = _pair("vgg11_bn")
    student.eval()
    images = torch.randn(4, 3, 32, 32)
    swa = _loss(student, teacher, images, None, MatchingConfig(kind="swa"))
    sswa0 = _loss(student, teacher, images, None, MatchingConfig(kind="sswa", drop_p=0.0))
    sswa = _loss(student, teacher, images, None, MatchingConfig(kind="sswa", drop_p=0.5))
    torch.testing.assert_close(swa, sswa0)
    assert abs(swa.item() - sswa.item()) > 1e-4


def test_none_gives_zero_and_teacher_in_train_mode_is_refused() -> None:
    teacher, student = _pair("resnet18")
    images = torch.randn(2, 3, 32, 32)
    assert _loss(student, teacher, images, None, MatchingConfig(kind="none")).item() == 0.0
    with pytest.raises(ValueError, match="teacher: must be in eval mode"):
        teacher_targets(teacher.train(), images, None, MatchingConfig())


def test_distance_bounds_and_resize() -> None:
    a = torch.rand(2, 7, 7)
    assert normalized_map_distance(a, a).max() < 1e-5
    orthogonal = torch.zeros(1, 2, 2)
    orthogonal[0, 0, 0] = 1
    other = torch.zeros(1, 2, 2)
    other[0, 1, 1] = 3
    torch.testing.assert_close(normalized_map_distance(orthogonal, other), torch.tensor([2**0.5]))
    assert normalized_map_distance(torch.rand(2, 14, 14), a).shape == (2,)


def test_cosine_distance_bounds_scale_invariance_and_relation_to_swa() -> None:
    a = torch.rand(3, 7, 7)
    torch.testing.assert_close(cosine_map_distance(a, 3.0 * a), torch.zeros(3))  # cos = 1
    torch.testing.assert_close(cosine_map_distance(a, -a), torch.full((3,), 2.0))  # cos = -1
    one, other = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    one[0, 0, 0], other[0, 1, 1] = 1.0, 3.0
    torch.testing.assert_close(cosine_map_distance(one, other), torch.tensor([1.0]))
    # 1 - cos is half SWA's distance squared; a student map of another size is resized first.
    b = torch.rand(3, 14, 14)
    swa = normalized_map_distance(b, a)
    torch.testing.assert_close(cosine_map_distance(b, a), swa.pow(2) / 2)


def test_cosine_distance_of_an_all_zero_map_is_finite() -> None:
    # A ReLU'd Grad-CAM can be all zero: cos is then 0, the distance 1, and no NaN anywhere.
    zero = torch.zeros(2, 7, 7, requires_grad=True)
    teacher = torch.rand(2, 7, 7)
    distance = cosine_map_distance(zero, teacher)
    torch.testing.assert_close(distance, torch.ones(2), rtol=0, atol=1e-6)
    distance.sum().backward()
    assert zero.grad is not None
    assert torch.isfinite(zero.grad).all()
    torch.testing.assert_close(
        cosine_map_distance(teacher, torch.zeros(2, 7, 7)), torch.ones(2), rtol=0, atol=1e-6
    )


def test_gradcam_cos_matches_swas_grad_cam_with_one_minus_cosine() -> None:
    teacher, student = _pair("vgg11_bn")
    student.eval()
    images = torch.randn(1, 3, 32, 32)
    swa_config, cos_config = MatchingConfig(kind="swa"), MatchingConfig(kind="gradcam_cos")
    assert cos_config.class_specific
    swa_targets = teacher_targets(teacher, images, None, swa_config)
    cos_targets = teacher_targets(teacher, images, None, cos_config)
    assert swa_targets.maps is not None
    assert cos_targets.maps is not None
    torch.testing.assert_close(cos_targets.maps, swa_targets.maps)  # the same Grad-CAM
    swa = _loss(student, teacher, images, None, swa_config)
    cos = _loss(student, teacher, images, None, cos_config)
    torch.testing.assert_close(cos, swa.pow(2) / 2)  # one image: 1 - cos = d^2 / 2


def test_gradcam_cos_with_an_all_zero_student_map_is_finite() -> None:
    teacher, student = _pair("vgg11_bn")
    student.eval()
    # A zero last layer makes every d logit / d A zero, so the student's Grad-CAM is all zero.
    last = student.classifier[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
    images = torch.randn(4, 3, 32, 32)
    loss = _loss(student, teacher, images, None, MatchingConfig(kind="gradcam_cos"))
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(g).all() for g in grads)


def test_a_distillation_trial_trains_with_gradcam_cos() -> None:
    setup = TrialSetup(
        dataset="shapes",
        dataset_options={"image_size": 32},
        num_classes=10,
        arch="vgg11_bn",
        teacher_width=8,
        epochs=2,
        train_size=16,
        val_size=8,
        batch_size=8,
    )
    teacher = build_model("vgg11_bn", num_classes=10, image_size=32, width_divisor=8)
    losses = {}
    for beta in (0.0, 5.0):
        reports = Reports()
        config = {"matching": "gradcam_cos", "beta": beta, "student_width": 2}
        run_distillation(config, setup, teacher.state_dict(), report=reports.record)
        assert reports.epochs == [0, 1]
        assert {"map", "attr_cos", "params"} <= set(reports.metrics[-1])
        losses[beta] = [metrics["loss"] for metrics in reports.metrics]
    assert all(math.isfinite(v) for v in losses[5.0])
    # The matching term is in the training loss: the same seed, data and student, a larger loss.
    assert losses[5.0][0] > losses[0.0][0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "gwa"}, r"kind: must be one of \[.*'gradcam_cos'\], got 'gwa'"),
        (
            {"kind": "gradcam_cos", "drop_p": 0.3},
            "drop_p: applies only to kind 'sswa', got 0.3 with 'gradcam_cos'",
        ),
        ({"kind": "swa", "drop_p": 0.3}, "drop_p: applies only to kind 'sswa'"),
        ({"kind": "sswa", "drop_p": 1.0}, r"drop_p: must be in \[0, 1\), got 1.0"),
        ({"classes": "all"}, "classes: must be one of"),
        ({"top_k": 0}, "top_k: must be a positive integer, got 0"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatchingConfig(**kwargs)  # type: ignore[arg-type]


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ValueError, match=r"kind: .*; top_k: "):
        MatchingConfig(kind="x", top_k=0)  # type: ignore[arg-type]
