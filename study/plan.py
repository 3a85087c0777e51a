"""A study's plan: what its teacher and its trials run, built once from a valid spec.

The spec says what was asked; the plan is what the driver hands out: the study-wide part of
every trial's configuration (:class:`trainables.trial.TrialSetup`), the teacher's (its own
epochs, ``teacher.dataset_options`` over the study's data) and the number of classes, which
only the data set knows and is counted once here, on the evaluation split, before the teacher
stage. Preflight builds the same setups (with :func:`trial_setup`) to check the data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from study.spec import Spec
from trainables.data.descriptors import dataset_descriptor
from trainables.precision import auto_num_workers
from trainables.trial import TrialSetup, build_split

__all__ = ["StudyPlan", "plan_study", "teacher_dataset_options", "trial_setup"]


@dataclass(frozen=True)
class StudyPlan:
    """``trial``: every trial's study-wide setup; ``teacher``: the teacher's training setup
    (its epochs and data options; it is evaluated with ``trial``'s split like every trial);
    ``num_classes``: classes of the evaluation split, which both models predict."""

    trial: TrialSetup
    teacher: TrialSetup
    num_classes: int


def trial_setup(spec: Spec, *, num_classes: int, epochs: int | None = None) -> TrialSetup:
    """The study-wide part of every trial's configuration, from the spec (``num_workers:
    auto`` sized here, from ``resources_per_trial.cpu``)."""
    options: dict[str, Any] = {"image_size": spec.dataset.image_size, **spec.dataset.options}
    if spec.dataset.root is not None:
        options["root"] = spec.dataset.root
    data = dataset_descriptor(spec.dataset.name)
    return TrialSetup(
        dataset=spec.dataset.name,
        dataset_options=options,
        num_classes=num_classes,
        arch=spec.teacher.arch,
        teacher_width=spec.teacher.width,
        epochs=spec.epochs if epochs is None else epochs,
        train_size=spec.dataset.train_size,
        val_size=spec.dataset.val_size,
        eval_split=data.eval_split,
        batch_size=spec.training.batch_size,
        optimization=spec.training.optimization,
        seed=spec.seed,
        num_workers=(
            auto_num_workers(spec.resources_per_trial.cpu)
            if spec.training.num_workers == "auto"
            else spec.training.num_workers
        ),
        threads=max(1, int(spec.resources_per_trial.cpu)),
        multi_label=data.multi_label,
        headline=tuple(spec.objectives),
        extra=dict(spec.method_options),
        attribution_methods=spec.evaluation.attribution_methods,
        overlay_images=spec.evaluation.overlay_images,
        accelerator=spec.training.accelerator,
        evaluation_protocol=spec.evaluation.protocol,
    )


def teacher_dataset_options(spec: Spec) -> dict[str, Any]:
    """Options of the teacher's training data: ``teacher.dataset_options`` over the study's."""
    return {**spec.dataset.options, **spec.teacher.dataset_options}


def plan_study(spec: Spec) -> StudyPlan:
    """The plan of ``spec``; opens the evaluation split once to count its classes (the
    generated shapes build one sample for it, a data set on disk reads its class list)."""
    unsized = trial_setup(spec, num_classes=1)
    num_classes = build_split(
        unsized, unsized.eval_split, 1 if dataset_descriptor(spec.dataset.name).generated else None
    ).num_classes
    trial = replace(unsized, num_classes=num_classes)
    teacher = replace(
        trial,
        epochs=spec.teacher.epochs,
        dataset_options={**trial.dataset_options, **teacher_dataset_options(spec)},
    )
    return StudyPlan(trial=trial, teacher=teacher, num_classes=num_classes)
