"""The distillation trainable: a narrower student learns from the teacher with KD + matching.

Searched config keys (``search_spaces/distillation.yaml``): ``matching`` (none, ewa, swa,
sswa), ``beta``, ``drop_p`` and ``student_width`` (the student's width divisor relative to the
teacher: the teacher at /2 and student_width 4 give a /8 student). Everything fixed for the
whole study travels in :class:`TrialSetup`, and the teacher's weights through Ray's object
store (``tune.with_parameters``), so no trial retrains or reloads the teacher from disk.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from trainables.data import build_dataset
from trainables.data.sample import ImageDataset
from trainables.loop import (
    CompressionHooks,
    Evaluator,
    LoopConfig,
    Optimization,
    Reporter,
    TrainState,
    train_student,
)
from trainables.matching import MatchingConfig
from trainables.models import build_model

__all__ = [
    "CHECKPOINT_FILE",
    "TrialSetup",
    "build_split",
    "distillation_trainable",
    "make_evaluator",
    "make_loaders",
    "run_distillation",
    "student_divisor",
]

CHECKPOINT_FILE = "state.pt"


@dataclass(frozen=True)
class TrialSetup:
    """The part of a trial's configuration that the whole study shares.

    Attributes:
        dataset: registry name (``shapes``, ``voc2012``, ``imagefolder``).
        dataset_options: constructor options except split and size (``image_size``, ``root``...).
        train_size, val_size: sample counts of the generated shapes splits (None: defaults).
        eval_split: the split evaluated after each epoch (one with masks when there is one).
        arch, teacher_width: the teacher's architecture and width divisor.
        num_classes: output size.
        epochs, batch_size: training length and batch size.
        optimization: optimiser and KD settings.
        seed: base seed of the study.
        num_workers: DataLoader workers.
        threads: torch threads per trial (from the trial's CPU resources).
    """

    dataset: str
    dataset_options: Mapping[str, Any]
    num_classes: int
    arch: str
    teacher_width: int
    epochs: int
    train_size: int | None = None
    val_size: int | None = None
    eval_split: str = "val"
    batch_size: int = 64
    optimization: Optimization = field(default_factory=Optimization)
    seed: int = 0
    num_workers: int = 0
    threads: int = 1
    multi_label: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


def student_divisor(setup: TrialSetup, student_width: int) -> int:
    """The student's absolute width divisor: the teacher's times ``student_width``."""
    return setup.teacher_width * student_width


def build_split(setup: TrialSetup, split: str, size: int | None) -> ImageDataset:
    """The data set of ``split`` as the study configures it."""
    options = dict(setup.dataset_options)
    if setup.dataset == "shapes":
        options["seed"] = setup.seed
        if size is not None:
            options["size"] = size
    return build_dataset(setup.dataset, split=split, **options)


def make_loaders(setup: TrialSetup) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Shuffled training batches and the evaluation split's batches."""
    train = build_split(setup, "train", setup.train_size)
    evaluation = build_split(setup, setup.eval_split, setup.val_size)
    common: dict[str, Any] = {"batch_size": setup.batch_size, "num_workers": setup.num_workers}
    return (
        DataLoader(train, shuffle=True, drop_last=len(train) > setup.batch_size, **common),
        DataLoader(evaluation, shuffle=False, **common),
    )


def make_evaluator(
    loader: DataLoader[Any], *, multi_label: bool, device: torch.device | str = "cpu"
) -> Evaluator:
    """The loop's per-epoch evaluation: ``evaluate`` on ``loader``, metrics only."""
    from trainables.evaluation import evaluate

    def run(model: nn.Module, teacher: nn.Module | None) -> dict[str, float]:
        result = evaluate(model, loader, teacher=teacher, multi_label=multi_label, device=device)
        return dict(result.metrics)

    return run


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
    matching = MatchingConfig(
        kind=config.get("matching", "none"), drop_p=float(config.get("drop_p", 0.0))
    )
    teacher = build_model(
        setup.arch, num_classes=setup.num_classes,
        image_size=int(setup.dataset_options.get("image_size", 224)),
        width_divisor=setup.teacher_width,
    )  # fmt: skip
    teacher.load_state_dict(dict(teacher_state))
    student = build_model(
        setup.arch, num_classes=setup.num_classes,
        image_size=int(setup.dataset_options.get("image_size", 224)),
        width_divisor=student_divisor(setup, int(config.get("student_width", 2))),
    )  # fmt: skip
    train_loader, eval_loader = make_loaders(setup)
    loop = LoopConfig(
        epochs=setup.epochs, optimization=setup.optimization,
        beta=float(config.get("beta", 0.0)),
        multi_label=setup.multi_label, seed=setup.seed,
    )  # fmt: skip
    train_student(
        student, teacher, train_loader, config=loop, matching=matching,
        evaluate=make_evaluator(eval_loader, multi_label=setup.multi_label, device=device),
        report=report,
        hooks=CompressionHooks(), resume=resume, device=device,
    )  # fmt: skip


def distillation_trainable(
    config: dict[str, Any], setup: TrialSetup, teacher_state: Mapping[str, Tensor]
) -> None:
    """Ray Tune function trainable: resumes from Tune's checkpoint, reports every epoch."""
    from ray import tune

    torch.set_num_threads(max(1, setup.threads))
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            data = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
        resume = TrainState.from_dict(data)

    def report(epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state.as_dict(), Path(folder) / CHECKPOINT_FILE)
            tune.report(
                {**metrics, "epoch": epoch},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    device = "cuda" if torch.cuda.is_available() else "cpu"
    run_distillation(config, setup, teacher_state, report=report, resume=resume, device=device)
