from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainables.data import ShapesDataset
from trainables.loop import (
    CompressionHooks,
    DivergedError,
    LoopConfig,
    Optimization,
    TrainState,
    train_student,
)
from trainables.matching import MatchingConfig
from trainables.models import build_model


def _loader() -> DataLoader[Any]:
    return DataLoader(ShapesDataset("train", size=24, image_size=32), batch_size=8, shuffle=True)


def _models() -> tuple[nn.Module, nn.Module]:
    teacher = build_model("vgg11_bn", num_classes=10, image_size=32, width_divisor=8).eval()
    student = build_model("vgg11_bn", num_classes=10, image_size=32, width_divisor=16)
    return teacher, student


def _no_eval(model: nn.Module, teacher: nn.Module | None) -> dict[str, float]:
    return {"map": 0.0}


def _run(
    student: nn.Module,
    teacher: nn.Module | None,
    epochs: int,
    matching: MatchingConfig,
    resume: TrainState | None = None,
    beta: float = 1.0,
) -> list[tuple[int, dict[str, float], TrainState]]:
    reports: list[tuple[int, dict[str, float], TrainState]] = []
    train_student(
        student,
        teacher,
        _loader(),
        config=LoopConfig(epochs=epochs, optimization=Optimization(lr=0.01), beta=beta),
        matching=matching,
        evaluate=_no_eval,
        report=lambda e, m, s: reports.append((e, m, s)),
        resume=resume,
    )
    return reports


def test_reports_every_epoch_with_loss_size_and_eval_metrics() -> None:
    teacher, student = _models()
    reports = _run(student, teacher, 2, MatchingConfig(kind="sswa", drop_p=0.3))
    assert [r[0] for r in reports] == [0, 1]
    metrics = reports[-1][1]
    assert metrics["map"] == 0.0
    assert metrics["params"] == sum(p.numel() for p in student.parameters())
    assert metrics["loss"] > 0
    assert reports[-1][2].epoch == 2
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize(
    "matching",
    [MatchingConfig(kind="swa"), MatchingConfig(kind="sswa", drop_p=0.3)],
    ids=["swa", "sswa"],
)
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(matching: MatchingConfig) -> None:
    # SSWA's random drop masks too: the loop reseeds their generator every epoch.
    teacher, student = _models()
    start = copy.deepcopy(student.state_dict())
    straight = _run(student, teacher, 2, matching)
    student.load_state_dict(start)
    first = _run(student, teacher, 2, matching)[:1]
    fresh = _models()[1]
    resumed = _run(fresh, teacher, 2, matching, resume=first[0][2])
    assert [r[0] for r in resumed] == [1]
    for key, value in straight[-1][2].model.items():
        torch.testing.assert_close(resumed[-1][2].model[key], value)


def test_without_teacher_trains_on_the_task_loss() -> None:
    _, student = _models()
    reports = _run(student, None, 1, MatchingConfig(kind="none"))
    assert reports[0][1]["loss"] > 0
    with pytest.raises(ValueError, match="matching: needs a teacher"):
        _run(student, None, 1, MatchingConfig(kind="swa"))


def test_after_step_hook_runs_each_step_and_divergence_is_reported() -> None:
    teacher, student = _models()
    calls: list[int] = []
    train_student(
        student,
        teacher,
        _loader(),
        config=LoopConfig(epochs=1),
        matching=MatchingConfig("none"),
        evaluate=_no_eval,
        report=lambda *a: None,
        hooks=CompressionHooks(after_step=lambda m: calls.append(1)),
    )
    assert len(calls) == 3

    def explode(model: nn.Module) -> None:
        for parameter in model.parameters():
            parameter.data.mul_(1e30)

    with pytest.raises(DivergedError, match=r"loss is (nan|inf) at epoch 0"):
        train_student(
            student,
            teacher,
            _loader(),
            config=LoopConfig(epochs=1),
            matching=MatchingConfig("none"),
            evaluate=_no_eval,
            report=lambda *a: None,
            hooks=CompressionHooks(after_step=explode),
        )


def test_adamw_optimizer_trains_and_resumes() -> None:
    teacher, student = _models()
    reports: list[TrainState] = []
    train_student(
        student,
        teacher,
        _loader(),
        config=LoopConfig(epochs=2, optimization=Optimization(optimizer="adamw", lr=1e-3)),
        matching=MatchingConfig("ewa"),
        evaluate=_no_eval,
        report=lambda e, m, s: reports.append(s),
    )
    assert "exp_avg" in next(iter(reports[0].optimizer["state"].values()))


def test_reports_carry_train_and_eval_seconds() -> None:
    """The timing keys bench.sweep_overhead sums; evaluation time includes the evaluator's."""
    teacher, student = _models()

    def slow_eval(model: nn.Module, teacher: nn.Module | None) -> dict[str, float]:
        time.sleep(0.05)
        return {"map": 0.0}

    reports: list[dict[str, float]] = []
    train_student(
        student,
        teacher,
        _loader(),
        config=LoopConfig(epochs=2),
        matching=MatchingConfig("none"),
        evaluate=slow_eval,
        report=lambda e, m, s: reports.append(m),
    )
    for metrics in reports:
        assert metrics["time_train_s"] > 0
        assert metrics["time_eval_s"] >= 0.05


def _step_gradient_norms(grad_clip: float, *, beta: float = 20.0) -> list[float]:
    """The L2 norm of all the student's gradients as each optimiser step used them (read in
    ``after_step``: the loop zeroes gradients only before the next backward)."""
    torch.manual_seed(0)
    teacher, student = _models()
    norms: list[float] = []

    def record(model: nn.Module) -> None:
        grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
        norms.append(float(torch.cat(grads).norm()))

    train_student(
        student,
        teacher,
        _loader(),
        config=LoopConfig(
            epochs=1, optimization=Optimization(lr=0.01, grad_clip=grad_clip), beta=beta
        ),
        matching=MatchingConfig(kind="swa"),
        evaluate=_no_eval,
        report=lambda e, m, s: None,
        hooks=CompressionHooks(after_step=record),
    )
    return norms


def test_grad_clip_bounds_the_norm_of_every_step() -> None:
    free = _step_gradient_norms(0.0)
    assert len(free) == 3
    clip = min(free) / 2  # below every unclipped step: each one is clipped
    clipped = _step_gradient_norms(clip)
    assert len(clipped) == 3
    assert clipped == pytest.approx([clip] * 3, rel=1e-4)
    # The first step's gradient is the same before clipping (same weights, same batch), so
    # clipping rescaled it, nothing else: its norm went from free[0] to clip.
    assert free[0] > clip


def test_grad_clip_leaves_a_gradient_below_the_bound_alone() -> None:
    free = _step_gradient_norms(0.0)
    assert _step_gradient_norms(max(free) * 2) == pytest.approx(free, rel=1e-6)
