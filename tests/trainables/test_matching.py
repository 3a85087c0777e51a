from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainables.attribution import grad_cam
from trainables.matching import (
    MatchingConfig,
    matching_loss,
    normalized_map_distance,
    select_classes,
    teacher_targets,
)
from trainables.models import build_model, forward_features, forward_head, matched_layer

ARCHS = ["vgg11_bn", "resnet18"]


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
@pytest.mark.parametrize("kind", ["ewa", "swa", "sswa"])
def test_loss_is_zero_for_identical_networks(arch: str, kind: str) -> None:
    teacher, _ = _pair(arch)
    images = torch.randn(4, 3, 32, 32)
    config = MatchingConfig(kind=kind)  # type: ignore[arg-type]
    loss = _loss(copy.deepcopy(teacher), teacher, images, None, config)
    assert loss.item() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["ewa", "swa", "sswa"])
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


def _naive_swa_loss(
    student: nn.Module, teacher: nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """The definition, computed the slow way: full-network Grad-CAM per class."""
    distances = []
    for k in range(classes.shape[1]):
        m_s = grad_cam(student, matched_layer(student), images, classes[:, k], create_graph=True)
        m_t = grad_cam(teacher, matched_layer(teacher), images, classes[:, k])
        distances.append(normalized_map_distance(m_s, m_t))
    return torch.stack(distances, 1).mean(1).mean()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("top_k", [1, 3])
def test_head_only_gradients_equal_the_full_second_order_computation(arch: str, top_k: int) -> None:
    teacher, student = _pair(arch)
    # float64 and no dropout, so both computations see the same function to rounding.
    teacher, student = teacher.double(), student.double().eval()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    config = MatchingConfig(kind="swa", classes="topk", top_k=top_k)
    ours = _loss(student, teacher, images, None, config)
    ours.backward()
    fast = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    student.zero_grad(set_to_none=True)
    classes = teacher(images).topk(top_k, dim=1).indices
    naive = _naive_swa_loss(student, teacher, images, classes)
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
        _naive_swa_loss(student, teacher, images[:1], torch.tensor([[1, 3]])),
        _naive_swa_loss(student, teacher, images[1:2], torch.tensor([[2]])),
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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "gwa"}, "kind: must be one of"),
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
