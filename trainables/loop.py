"""The training loop every compression trainable shares, with small hooks for what differs.

One epoch: for each batch, the frozen teacher runs once without autograd (its logits for KD and
its maps for matching), the student runs once, and the loss is

    KD(student, teacher, labels) + beta * matching(student maps, teacher maps)

then the method's ``after_step`` hook runs (e.g. unstructured pruning re-applies its masks).
After each epoch the student is evaluated and ``report(epoch, metrics, state)`` is called with
a state the caller can checkpoint and hand back as ``resume`` to continue from that epoch.

Precision (:mod:`trainables.precision`, ``LoopConfig.accelerator``): forward passes and the
losses run under the study's autocast (bf16 or fp16, or none at fp32, the CPU's default); fp16
steps go through a loss scaler, whose state the checkpoint carries; on CUDA the models and
image batches are channels-last when asked.

Besides the metrics, each report carries ``time_train_s`` (the epoch's batches: forward,
losses, backward, step, hooks; the first epoch run also the teacher cache's one pass) and
``time_eval_s`` (evaluation and size metrics), wall seconds.
They are no canonical metric names, so the MLflow layer does not log them; they let
``bench.sweep_overhead`` tell the work of a trial from what the sweep machinery costs around it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from trainables.data.sample import ImageDataset
from trainables.losses import (
    DEFAULT_KD_ALPHA,
    DEFAULT_KD_TEMPERATURE,
    distillation_loss,
    task_loss,
)
from trainables.matching import MatchingConfig, matching_loss, teacher_targets
from trainables.models import forward_features, forward_head
from trainables.precision import Accelerator, AcceleratorOptions, loader_options, widen
from trainables.teacher_cache import TeacherCache

__all__ = [
    "CompressionHooks",
    "DivergedError",
    "LoopConfig",
    "Optimization",
    "TrainState",
    "train_student",
]


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the trial cannot go on."""


@dataclass(frozen=True)
class Optimization:
    """Optimiser and KD settings (cosine decay per epoch; KD as the paper: T=4, alpha=0.9).

    ``sgd`` is the paper's optimiser (momentum applies to it only); ``adamw`` trains a shapes
    teacher from scratch far faster (6 epochs: 44% mAP against SGD's 28%).

    ``grad_clip``: the largest L2 norm of all the student's gradients together that a step
    uses; a larger one is scaled down to it (``torch.nn.utils.clip_grad_norm_``; 0: never).
    Why: the matching loss normalises the student's map (``M / ||M||``), whose gradient grows
    as ``1 / ||M||``; a ReLU'd SWA map that is almost all zero made one batch's gradient
    ~10^4 times KD's (docs/method.md, "Training stays finite") and SGD's step wrecked the
    weights. Healthy steps stay far below the default, which only bounds those spikes.

    The one place their defaults live: specs, trial setups and the loop all use this class.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    kd_temperature: float = DEFAULT_KD_TEMPERATURE
    kd_alpha: float = DEFAULT_KD_ALPHA
    grad_clip: float = 5.0


@dataclass(frozen=True)
class LoopConfig:
    """One fine-tuning run: epochs, optimiser settings, matching weight beta, seed.

    ``cache_teacher`` runs the teacher over the training set once and reuses its outputs every
    epoch (:mod:`trainables.teacher_cache`) when the data set says its samples never change
    (:attr:`trainables.data.ImageDataset.deterministic`, i.e. no random augmentation).
    ``accelerator``: precision and memory layout (:mod:`trainables.precision`).
    """

    epochs: int
    optimization: Optimization = field(default_factory=Optimization)
    beta: float = 0.0
    multi_label: bool = True
    seed: int = 0
    cache_teacher: bool = True
    accelerator: AcceleratorOptions = field(default_factory=AcceleratorOptions)


@dataclass
class CompressionHooks:
    """What a compression method adds to the shared loop; every hook is optional.

    Attributes:
        after_step: called with the student after each optimiser step.
        size_metrics: the student's size metrics (``params``, ``nonzero_params``, ...).
    """

    after_step: Callable[[nn.Module], None] | None = None
    size_metrics: Callable[[nn.Module], dict[str, float]] = field(
        default=lambda model: {"params": float(sum(p.numel() for p in model.parameters()))}
    )


@dataclass
class TrainState:
    """What a checkpoint holds: the next epoch to run, the student and optimiser state, and
    at fp16 the loss scaler's (None otherwise, and then absent from :meth:`as_dict`)."""

    epoch: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {
            "epoch": self.epoch,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
        }
        if self.scaler is not None:
            data["scaler"] = self.scaler
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        return cls(
            data["epoch"], data["model"], data["optimizer"], data["scheduler"], data.get("scaler")
        )


def _teacher_cache(
    teacher: nn.Module, train_loader: DataLoader[Any], accelerator: Accelerator
) -> TeacherCache | None:
    """The teacher's outputs on ``train_loader``'s data set, in index order (None: too big)."""
    dataset = train_loader.dataset
    size = len(dataset)  # type: ignore[arg-type]
    in_order = DataLoader(
        dataset,
        batch_size=train_loader.batch_size or 1,
        shuffle=False,
        # One pass: workers that outlive it would only hold memory.
        **loader_options(
            accelerator.device, num_workers=train_loader.num_workers, persistent=False
        ),
    )
    return TeacherCache.build(
        teacher, in_order, size=size, device=accelerator.device, accelerator=accelerator
    )


Evaluator = Callable[[nn.Module, nn.Module | None], dict[str, float]]
Reporter = Callable[[int, dict[str, float], TrainState], None]


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clip(model: nn.Module, max_norm: float) -> None:
    """Scale ``model``'s gradients down to total L2 norm ``max_norm`` (0: leave them)."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def train_student(
    student: nn.Module,
    teacher: nn.Module | None,
    train_loader: DataLoader[Any],
    *,
    config: LoopConfig,
    matching: MatchingConfig,
    evaluate: Evaluator,
    report: Reporter,
    hooks: CompressionHooks | None = None,
    resume: TrainState | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """Fine-tune ``student`` against ``teacher`` for ``config.epochs`` epochs.

    Args:
        student: the compressed network (any torchvision VGG/ResNet from ``build_model``).
        teacher: the uncompressed network, frozen and kept in eval mode here; None trains
            ``student`` on the task loss alone (how the teacher itself is trained).
        train_loader: batches of samples (``image`` [B, 3, H, W], ``labels`` [B, C]).
        config: optimisation settings, beta and the KD weights.
        matching: which attribution map is matched (kind ``none`` for plain compression).
        evaluate: ``evaluate(student, teacher) -> metrics`` after each epoch.
        report: called after each epoch with (epoch, metrics, state to checkpoint); the
            metrics include ``time_train_s`` and ``time_eval_s`` (see the module docstring).
        hooks: method-specific additions.
        resume: a state from an earlier ``report`` to continue from.
        device: where to train (with ``config.accelerator``'s precision and layout).

    Raises:
        DivergedError: the loss became NaN or infinite.
        ValueError: ``config.accelerator`` does not fit ``device``
            (:func:`trainables.precision.resolve_precision`).
    """
    hooks = hooks or CompressionHooks()
    accelerator = Accelerator.on(device, config.accelerator)
    device = accelerator.device
    accelerator.prepare(student)
    if teacher is not None:
        accelerator.prepare(teacher).eval().requires_grad_(False)
    elif matching.kind != "none":
        raise ValueError(f"matching: needs a teacher, got kind {matching.kind!r} without one")
    settings = config.optimization
    optimizer: torch.optim.Optimizer
    if settings.optimizer == "adamw":
        optimizer = torch.optim.AdamW(
            student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            student.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    scaler = accelerator.grad_scaler()
    start = 0
    if resume is not None:
        student.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        if scaler is not None and resume.scaler is not None:
            scaler.load_state_dict(resume.scaler)
        start = resume.epoch
    generator = torch.Generator(device=device).manual_seed(config.seed)
    # The cache replaces the teacher's forward passes of every epoch, so building it is
    # training time: it is added to the first epoch's time_train_s.
    cache_started = time.perf_counter()
    cache = (
        _teacher_cache(teacher, train_loader, accelerator)
        if teacher is not None
        and config.cache_teacher
        and start < config.epochs
        and isinstance(train_loader.dataset, ImageDataset)
        and train_loader.dataset.deterministic
        else None
    )
    carried_train_s = time.perf_counter() - cache_started
    for epoch in range(start, config.epochs):
        torch.manual_seed(config.seed * 1000 + epoch)  # same shuffles after a resume
        generator.manual_seed(config.seed * 1000 + epoch)  # and the same SSWA drop masks
        student.train()
        total, batches = 0.0, 0
        train_started = time.perf_counter()
        for batch in train_loader:
            images = accelerator.images(batch["image"])
            labels = accelerator.tensor(batch["labels"])
            with accelerator.autocast():
                features = forward_features(student, images)
                logits = forward_head(student, features)
                # The losses in fp32 (a no-op at fp32): autocast lowers matrix products, not
                # these element-wise terms, which would otherwise run in the logits' bf16 or
                # fp16 and lose KD's small per-label terms.
                if teacher is None:
                    loss = task_loss(widen(logits), labels, multi_label=config.multi_label)
                else:
                    outputs = None if cache is None else cache.lookup(batch["index"])
                    targets = teacher_targets(
                        teacher, images, labels, matching, generator=generator, outputs=outputs
                    )
                    loss = distillation_loss(
                        widen(logits),
                        widen(targets.logits),
                        labels,
                        temperature=settings.kd_temperature,
                        alpha=settings.kd_alpha,
                        multi_label=config.multi_label,
                    )
                    if matching.kind != "none" and config.beta > 0:
                        match = matching_loss(
                            student, features, logits, targets, matching, generator=generator
                        )
                        loss = loss + config.beta * match
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DivergedError(f"loss is {value} at epoch {epoch}, batch {batches}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                _clip(student, settings.grad_clip)
                optimizer.step()
            else:
                # Scaled so that fp16 gradients stay above the subnormals; the step is
                # skipped (and the scale halved) when a gradient overflowed.
                scaler.scale(loss).backward()
                if settings.grad_clip > 0:
                    scaler.unscale_(optimizer)  # clip the true gradients, not scaled ones
                    _clip(student, settings.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            if hooks.after_step is not None:
                hooks.after_step(student)
            total += value
            batches += 1
        scheduler.step()
        _synchronize(device)
        eval_started = time.perf_counter()
        # "loss" is the training loss; an evaluator's own loss on held-out data is not kept.
        metrics = {
            **evaluate(student, teacher),
            **hooks.size_metrics(student),
            "loss": total / max(batches, 1),
        }
        _synchronize(device)
        metrics["time_train_s"] = eval_started - train_started + carried_train_s
        carried_train_s = 0.0
        metrics["time_eval_s"] = time.perf_counter() - eval_started
        state = TrainState(
            epoch + 1,
            {k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
            # Copies: the optimiser keeps updating its momentum buffers in place.
            copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(scheduler.state_dict()),
            None if scaler is None else scaler.state_dict(),
        )
        report(epoch, metrics, state)
