"""The distillation trainable: a narrower student learns from the teacher with KD + matching.

Searched config keys (``search_spaces/distillation.yaml``): ``matching`` (a kind of
:data:`trainables.matching_kinds.MATCHING_KINDS`), ``beta``, ``drop_p`` and ``student_width``
(the student's width divisor relative to the teacher: the teacher at /2 and student_width 4
give a /8 student). Everything fixed for the
whole study travels in :class:`TrialSetup`, and the teacher's weights through Ray's object
store (``tune.with_parameters``), so no trial retrains or reloads the teacher from disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trainables.loop import CompressionHooks, Reporter, TrainState, train_student
from trainables.models import build_model
from trainables.size import SizeProbe, count_params
from trainables.trial import (
    CheckpointReporter,
    TrialSetup,
    build_teacher,
    image_size,
    loop_config,
    make_evaluator,
    make_loaders,
    matching_config,
    run_tune_trial,
)

__all__ = [
    "distillation_trainable",
    "run_distillation",
    "student_divisor",
]


def student_divisor(setup: TrialSetup, student_width: int) -> int:
    """The student's absolute width divisor: the teacher's times ``student_width``."""
    return setup.teacher_width * student_width


def _build_student(config: Mapping[str, Any], setup: TrialSetup) -> nn.Module:
    return build_model(
        setup.arch,
        num_classes=setup.num_classes,
        image_size=image_size(setup),
        width_divisor=student_divisor(setup, int(config.get("student_width", 2))),
    )


def run_distillation(
    config: Mapping[str, Any],
    setup: TrialSetup,
    teacher_state: Mapping[str, Tensor],
    *,
    report: Reporter,
    resume: TrainState | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """One distillation trial, without Ray: build teacher and student, train, report."""
    device = torch.device(device)
    torch.manual_seed(setup.seed)
    teacher = build_teacher(setup, teacher_state)
    student = _build_student(config, setup)
    train_loader, eval_loader = make_loaders(setup, device=device)
    sizes = SizeProbe(
        image_size(setup),
        final_epoch=setup.epochs - 1,
        next_epoch=0 if resume is None else resume.epoch,
        reference_params=count_params(teacher),
    )
    train_student(
        student,
        teacher,
        train_loader,
        config=loop_config(config, setup),
        matching=matching_config(config),
        evaluate=make_evaluator(
            eval_loader,
            multi_label=setup.multi_label,
            device=device,
            accelerator=setup.accelerator,
            protocol=setup.evaluation_protocol,
        ),
        report=report,
        hooks=CompressionHooks(size_metrics=sizes),
        resume=resume,
        device=device,
    )


def _run_with_payload(
    config: Mapping[str, Any],
    setup: TrialSetup,
    teacher_state: Mapping[str, Tensor],
    *,
    report: CheckpointReporter,
    resume: Mapping[str, Any] | None,
    device: torch.device | str,
) -> None:
    def report_state(epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        model = None
        if epoch == setup.epochs - 1:  # the last epoch: hand over the student to be saved
            model = _build_student(config, setup)
            model.load_state_dict(state.model)
        report(epoch, metrics, state.as_dict(), model=model)

    run_distillation(
        config,
        setup,
        teacher_state,
        report=report_state,
        resume=None if resume is None else TrainState.from_dict(resume),
        device=device,
    )


def distillation_trainable(
    config: dict[str, Any], setup: TrialSetup, teacher_state: Mapping[str, Tensor]
) -> None:
    """Ray Tune function trainable: resumes from Tune's checkpoint, reports every epoch."""
    run_tune_trial(_run_with_payload, config, setup, teacher_state)
