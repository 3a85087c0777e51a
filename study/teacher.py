"""Teacher stage: train the uncompressed network once (or load it), cached by content hash.

The cache key hashes everything that determines the teacher: data set and its options, the
architecture and width, the epochs and optimiser settings, the seed and the code version. A
second study with the same teacher settings loads the cached weights instead of retraining.
Checkpoints are read with ``torch.load(weights_only=True)``: a state dict, never a pickle.

The teacher trains and is evaluated on the driver's device (its GPU when it has one,
:func:`trainables.precision.training_device`) at the study's precision, like the trials; a
teacher trained at bf16 or fp16 has a key of its own, while an fp32 teacher's key is what it
was before precision was a setting, so teachers cached then are still found.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from study.plan import StudyPlan, teacher_dataset_options
from study.spec import Spec
from trainables import __version__
from trainables.loop import LoopConfig, Optimization, TrainState, train_student
from trainables.matching import MatchingConfig
from trainables.models import build_model
from trainables.precision import Accelerator, ResolvedPrecision, training_device
from trainables.size import count_params
from trainables.trial import make_evaluator, make_loaders

__all__ = [
    "TeacherResult",
    "prepare_teacher",
    "teacher_key",
    "teacher_optimization",
]


@dataclass(frozen=True)
class TeacherResult:
    """The teacher's weights, its evaluation metrics, where they are cached, and its key."""

    state: dict[str, Tensor]
    metrics: dict[str, float]
    path: Path
    key: str
    trained: bool


def teacher_optimization(spec: Spec) -> Optimization:
    """The optimiser settings the teacher trains with: the study's, at the teacher's own lr."""
    return replace(spec.training.optimization, lr=spec.teacher.lr)


def teacher_key(spec: Spec, *, precision: ResolvedPrecision = "fp32") -> str:
    """Content hash of everything that determines the trained teacher.

    Only what reaches the teacher's training counts: the students' learning rate and KD
    settings do not, so tuning them keeps the cached teacher. ``precision`` is the one it
    trains at (``training.precision`` resolved for the driver's device).
    """
    optimization = asdict(teacher_optimization(spec))
    for student_only in ("kd_temperature", "kd_alpha"):
        optimization.pop(student_only)
    # The data the teacher trains on (not the evaluation split, which is measured afresh).
    data = {
        "name": spec.dataset.name,
        "image_size": spec.dataset.image_size,
        "root": spec.dataset.root,
        "train_size": spec.dataset.train_size,
        "options": teacher_dataset_options(spec),
    }
    payload = {
        "dataset": data,
        "teacher": asdict(spec.teacher),
        "batch_size": spec.training.batch_size,
        "optimization": optimization,
        "seed": spec.seed,
        "version": __version__,
    }
    if precision != "fp32":  # absent at fp32: the keys of teachers cached before it existed
        payload["precision"] = precision
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _progress(epochs: int, started: float) -> Any:
    def report(epoch: int, metrics: dict[str, float], _state: TrainState) -> None:
        shown = "  ".join(
            f"{k} {v:.4g}" for k, v in metrics.items() if k in ("loss", "map", "top1", "attr_auc")
        )
        elapsed = time.monotonic() - started
        print(f"teacher epoch {epoch + 1}/{epochs}  {shown}  ({elapsed:.0f}s)", file=sys.stderr)

    return report


def prepare_teacher(spec: Spec, *, plan: StudyPlan, cache_dir: Path) -> TeacherResult:
    """Load the spec's teacher checkpoint, or the cached teacher, or train one (with progress).

    The teacher trains on the study's data with ``teacher.dataset_options`` applied over
    ``dataset.options`` (``plan.teacher``: e.g. the broader, shortcut-free data a pretrained
    teacher has seen) and is always evaluated on the study's own evaluation split
    (``plan.trial``), like every trial.
    """
    try:
        return _prepare_teacher(spec, plan=plan, cache_dir=cache_dir)
    finally:
        if torch.cuda.is_initialized():
            # The trials may share this machine's GPUs: hand back what the driver's
            # allocator still caches of the teacher stage.
            torch.cuda.empty_cache()


def _prepare_teacher(spec: Spec, *, plan: StudyPlan, cache_dir: Path) -> TeacherResult:
    setup = plan.teacher
    num_classes = plan.num_classes
    accelerator = Accelerator.on(training_device(), setup.accelerator)
    device = accelerator.device
    key = teacher_key(spec, precision=accelerator.precision)
    path = cache_dir / f"teacher-{key}.pt"
    trains = spec.teacher.checkpoint is None and not path.is_file()
    torch.manual_seed(spec.seed)  # the initial weights too: a cache key must mean one teacher
    model = build_model(
        spec.teacher.arch,
        num_classes=num_classes,
        image_size=spec.dataset.image_size,
        width_divisor=spec.teacher.width,
        # Only a teacher about to train starts from ImageNet: a checkpoint or the cache
        # replaces every weight, so they need no weights file (nor a hash of 0.5 GB).
        pretrained=spec.teacher.pretrained and trains,
    )
    _, eval_loader = make_loaders(plan.trial, device=device)
    train_loader, _ = make_loaders(setup, device=device)

    evaluation = make_evaluator(
        eval_loader,
        multi_label=setup.multi_label,
        device=device,
        accelerator=setup.accelerator,
        protocol=setup.evaluation_protocol,
    )
    # The teacher's row of each further method's table: measured once, like a trial's last epoch.
    further = make_evaluator(
        eval_loader,
        multi_label=setup.multi_label,
        device=device,
        attribution_methods=("grad_cam", *setup.attribution_methods),
        accelerator=setup.accelerator,
        protocol=setup.evaluation_protocol,
    )

    def final_evaluation(model: nn.Module, teacher: nn.Module | None) -> dict[str, float]:
        # A loaded teacher reports what a trained one does: its metrics and its size.
        accelerator.prepare(model)
        return {**further(model, teacher), "params": float(count_params(model))}

    def on_cpu(model: nn.Module) -> dict[str, Tensor]:
        # The trials receive it through Ray's object store, which must not hold CUDA tensors.
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    if spec.teacher.checkpoint is not None:
        given = Path(spec.teacher.checkpoint)
        model.load_state_dict(torch.load(given, weights_only=True, map_location="cpu"))
        metrics = final_evaluation(model, None)
        return TeacherResult(on_cpu(model), metrics, given, "", False)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
        print(f"teacher: cached weights {path}", file=sys.stderr)
        metrics = final_evaluation(model, None)
        return TeacherResult(on_cpu(model), metrics, path, key, False)
    final: dict[str, float] = {}
    progress = _progress(spec.teacher.epochs, time.monotonic())

    def report(epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        final.clear()
        final.update(metrics)
        progress(epoch, metrics, state)

    loop = LoopConfig(
        epochs=spec.teacher.epochs,
        optimization=teacher_optimization(spec),
        multi_label=setup.multi_label,
        seed=spec.seed,
        accelerator=setup.accelerator,
    )
    train_student(
        model,
        None,
        train_loader,
        config=loop,
        matching=MatchingConfig(kind="none"),
        evaluate=evaluation,
        report=report,
        device=device,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    state = on_cpu(model)
    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(path)  # atomic: a killed run never leaves half a teacher in the cache
    if setup.attribution_methods:
        final.update(further(model, None))
    return TeacherResult(state, final, path, key, True)
