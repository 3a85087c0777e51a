from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from trainables.losses import distillation_loss, task_loss


def test_multi_label_task_loss_is_sklearn_log_loss_over_all_labels() -> None:
    logits = torch.randn(8, 5, dtype=torch.float64)
    labels = (torch.rand(8, 5) > 0.6).double()
    expected = log_loss(labels.flatten().numpy(), logits.sigmoid().flatten().numpy())
    assert task_loss(logits, labels).item() == pytest.approx(expected, rel=1e-9)


def test_single_label_task_loss_is_cross_entropy() -> None:
    logits = torch.randn(6, 4, dtype=torch.float64)
    targets = torch.tensor([0, 3, 1, 1, 2, 0])
    one_hot = torch.nn.functional.one_hot(targets, 4).double()
    expected = log_loss(targets.numpy(), logits.softmax(1).numpy(), labels=[0, 1, 2, 3])
    assert task_loss(logits, one_hot, multi_label=False).item() == pytest.approx(expected, rel=1e-9)


def test_multi_label_kd_is_binary_kl_times_t_squared_plus_bce() -> None:
    student = torch.randn(8, 5, dtype=torch.float64) * 4
    teacher = torch.randn(8, 5, dtype=torch.float64) * 4
    labels = (torch.rand(8, 5) > 0.5).double()
    t, alpha = 4.0, 0.9
    p_s = (student / t).sigmoid().numpy()
    p_t = (teacher / t).sigmoid().numpy()
    kl = p_t * np.log(p_t / p_s) + (1 - p_t) * np.log((1 - p_t) / (1 - p_s))
    bce = log_loss(labels.flatten().numpy(), student.sigmoid().flatten().numpy())
    expected = alpha * t**2 * kl.mean() + (1 - alpha) * bce
    ours = distillation_loss(student, teacher, labels, temperature=t, alpha=alpha)
    assert ours.item() == pytest.approx(expected, rel=1e-9)


def test_single_label_kd_and_zero_at_equal_logits() -> None:
    logits = torch.randn(4, 3, dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0]), 3).double()
    pure_kd = distillation_loss(logits, logits, labels, alpha=1.0, multi_label=False)
    assert pure_kd.item() == pytest.approx(0.0, abs=1e-12)
    assert distillation_loss(logits, logits, labels, alpha=1.0).item() == pytest.approx(
        0, abs=1e-12
    )


def test_kd_gradient_reaches_student_only() -> None:
    student = torch.randn(2, 3, requires_grad=True)
    teacher = torch.randn(2, 3, requires_grad=True)
    distillation_loss(student, teacher, torch.ones(2, 3)).backward()
    assert student.grad is not None
    assert teacher.grad is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"temperature": 0.0}, "temperature: must be positive"), ({"alpha": 1.5}, r"alpha: must be")],
)
def test_kd_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), **kwargs)  # type: ignore[arg-type]
