"""Unstructured pruning: iterative global magnitude pruning, fine-tuned against the teacher.

Han et al. (2015), the paper's setting: all convolution weights (optionally the linear layers'
too) are ranked together by magnitude and the smallest are set to zero; the network is then
fine-tuned with KD + beta * matching against the unpruned teacher, and the cycle repeats.
Each step removes ``rate`` of the weights still alive, so after ``k`` steps exactly
``round(N * (1 - (1 - rate)^k))`` of the ``N`` prunable weights are zero (the paper: rate 0.2,
16 steps, 30 epochs per step: 97.2% sparsity). Biases and BN parameters are never pruned.

Pruned weights stay exactly zero: explicit boolean masks are multiplied in after every
optimiser step (the loop's ``after_step`` hook), so momentum and weight decay cannot revive
them, and every evaluation sees the sparse network. Ties at the threshold are broken by
position, which keeps the count exact.

The trainable: searched config ``prune_rate`` (the rate per step), ``matching``, ``beta``,
``drop_p``; study-wide options (the spec's ``method_options``): ``steps`` (default 16, as the
paper) and ``include_linear``. The study's ``epochs`` are split evenly over the steps; each
step runs the shared loop afresh (optimiser and cosine schedule restart, as each of the
paper's iterations does) and every epoch is reported with ``epoch`` the cumulative epoch, plus
``sparsity`` and ``prune_step``, so the whole trajectory is visible. The checkpoint payload
holds the step, the masks and the loop's state.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainables.loop import CompressionHooks, TrainState, train_student
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
    "MagnitudeMasks",
    "UnstructuredOptions",
    "UnstructuredSchedule",
    "parse_options",
    "prunable_weights",
    "run_unstructured_pruning",
    "unstructured_pruning_trainable",
]


@dataclass(frozen=True)
class UnstructuredOptions:
    """Study-wide settings: pruning steps, and whether linear layers are pruned too."""

    steps: int = 16
    include_linear: bool = False


@dataclass(frozen=True)
class UnstructuredSchedule:
    """Iterative pruning: ``steps`` times, remove ``rate`` of the live weights, fine-tune.

    Attributes:
        rate: fraction of the remaining weights removed per step, in [0, 1).
        steps: number of pruning steps.
        epochs_per_step: fine-tuning epochs after each step.
    """

    rate: float
    steps: int
    epochs_per_step: int

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.rate < 1.0:
            problems.append(f"rate: must be in [0, 1), got {self.rate}")
        if self.steps < 1:
            problems.append(f"steps: must be a positive integer, got {self.steps}")
        if self.epochs_per_step < 1:
            problems.append(
                f"epochs_per_step: must be a positive integer, got {self.epochs_per_step}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def epochs(self) -> int:
        return self.steps * self.epochs_per_step

    def sparsity(self, step: int) -> float:
        """Fraction of the prunable weights that are zero after ``step`` steps."""
        return 1.0 - (1.0 - self.rate) ** step


def parse_options(
    options: Mapping[str, Any], *, epochs: int
) -> tuple[UnstructuredOptions, list[str]]:
    """The options of a spec's ``method_options``, with every problem ("key: rule, got v")."""
    problems: list[str] = []
    default = UnstructuredOptions()
    known = tuple(UnstructuredOptions.__dataclass_fields__)
    for key in options:
        if key not in known:
            problems.append(
                f"{key}: unknown option of unstructured_pruning (valid: {', '.join(known)})"
            )
    steps = options.get("steps", default.steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        problems.append(f"steps: must be a positive integer, got {steps!r}")
        steps = default.steps
    elif epochs % steps:
        problems.append(
            f"steps: must divide epochs ({epochs}) so that every pruning step fine-tunes as long, "
            f"got {steps}" + ("" if "steps" in options else " (the default, as the paper)")
        )
    include_linear = options.get("include_linear", default.include_linear)
    if not isinstance(include_linear, bool):
        problems.append(f"include_linear: must be true or false, got {include_linear!r}")
        include_linear = default.include_linear
    return UnstructuredOptions(steps, include_linear), problems


def prunable_weights(model: nn.Module, *, include_linear: bool = False) -> dict[str, nn.Parameter]:
    """Parameter name -> weight of every convolution (and linear layer, if asked)."""
    kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear) if include_linear else (nn.Conv2d,)
    owners = {name for name, m in model.named_modules() if isinstance(m, kinds)}
    return {
        name: p
        for name, p in model.named_parameters()
        if name.rpartition(".")[2] == "weight" and name.rpartition(".")[0] in owners
    }


class MagnitudeMasks:
    """Keep-masks over the prunable weights of one model: pruned by global magnitude, applied.

    Attributes:
        masks: parameter name -> bool tensor of the weight's shape (True: kept).
    """

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self.masks = {name: mask.to(torch.bool) for name, mask in masks.items()}

    @classmethod
    def dense(cls, model: nn.Module, *, include_linear: bool = False) -> MagnitudeMasks:
        """All-kept masks over ``model``'s prunable weights."""
        weights = prunable_weights(model, include_linear=include_linear)
        return cls({name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()})

    @property
    def total(self) -> int:
        return sum(mask.numel() for mask in self.masks.values())

    @property
    def sparsity(self) -> float:
        """Fraction of the masked weights that are pruned."""
        pruned = sum(int((~mask).sum()) for mask in self.masks.values())
        return pruned / max(self.total, 1)

    def _weights(self, model: nn.Module) -> dict[str, Tensor]:
        parameters = dict(model.named_parameters())
        return {name: parameters[name] for name in self.masks}

    @torch.no_grad()
    def prune_to(self, model: nn.Module, sparsity: float) -> None:
        """Grow the pruned set to ``round(sparsity * total)`` weights, smallest magnitude first.

        Weights pruned before stay pruned (they rank first); ties are broken by position.
        """
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity: must be in [0, 1), got {sparsity}")
        weights = self._weights(model)
        # Pruned weights score -1, below every magnitude, so they are always chosen again.
        scores = torch.cat(
            [
                torch.where(self.masks[name].to(w.device), w.detach().abs(), -1.0).flatten().cpu()
                for name, w in weights.items()
            ]
        )
        count = round(sparsity * scores.numel())
        chosen = torch.sort(scores, stable=True).indices[:count]
        keep = torch.ones(scores.numel(), dtype=torch.bool)
        keep[chosen] = False
        offset = 0
        for name, weight in weights.items():
            size = weight.numel()
            self.masks[name] = keep[offset : offset + size].view_as(weight).to(weight.device)
            offset += size
        self.apply(model)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every pruned weight (after each optimiser step: the loop's ``after_step``)."""
        for name, weight in self._weights(model).items():
            mask = self.masks[name]
            if mask.device != weight.device:
                mask = self.masks[name] = mask.to(weight.device)
            weight.mul_(mask)

    def state_dict(self) -> dict[str, Tensor]:
        return {name: mask.cpu() for name, mask in self.masks.items()}


def _schedule(config: Mapping[str, Any], setup: TrialSetup) -> tuple[UnstructuredSchedule, bool]:
    options, problems = parse_options(setup.extra, epochs=setup.epochs)
    if problems:
        raise ValueError("method_options: " + "; ".join(problems))
    if "prune_rate" not in config:
        raise ValueError(
            f"prune_rate: is required by unstructured_pruning, got config {dict(config)}"
        )
    schedule = UnstructuredSchedule(
        float(config["prune_rate"]), options.steps, setup.epochs // options.steps
    )
    return schedule, options.include_linear


def run_unstructured_pruning(
    config: Mapping[str, Any],
    setup: TrialSetup,
    teacher_state: Mapping[str, Tensor],
    *,
    report: CheckpointReporter,
    resume: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """One iterative unstructured-pruning trial without Ray: prune, fine-tune, repeat, report.

    Reports every epoch with ``epoch`` counted over all steps; the payload is
    ``{"step": k, "masks": {...}, "loop": TrainState dict}`` (``k`` from 0).
    """
    device = torch.device(device)
    torch.manual_seed(setup.seed)
    schedule, include_linear = _schedule(config, setup)
    teacher = build_teacher(setup, teacher_state)
    student = copy.deepcopy(teacher)
    masks = MagnitudeMasks.dense(student, include_linear=include_linear)
    first_step, state = 0, None
    if resume is not None:
        first_step, state = int(resume["step"]), TrainState.from_dict(resume["loop"])
        masks = MagnitudeMasks(resume["masks"])
        student.load_state_dict(state.model)
        if state.epoch >= schedule.epochs_per_step:  # that step was finished: start the next
            first_step, state = first_step + 1, None
    per_step = schedule.epochs_per_step
    train_loader, eval_loader = make_loaders(setup, device=device)
    evaluate = make_evaluator(
        eval_loader,
        multi_label=setup.multi_label,
        device=device,
        accelerator=setup.accelerator,
        protocol=setup.evaluation_protocol,
    )
    sizes = SizeProbe(
        image_size(setup),
        final_epoch=schedule.epochs - 1,
        next_epoch=first_step * per_step + (0 if state is None else state.epoch),
        reference_params=count_params(teacher),
        sparse=True,
    )
    hooks = CompressionHooks(after_step=masks.apply, size_metrics=sizes)
    for step in range(first_step, schedule.steps):
        if state is None:
            masks.prune_to(student, schedule.sparsity(step + 1))

        def report_step(
            epoch: int, metrics: dict[str, float], train_state: TrainState, step: int = step
        ) -> None:
            payload = {"step": step, "masks": masks.state_dict(), "loop": train_state.as_dict()}
            metrics = {**metrics, "sparsity": masks.sparsity, "prune_step": float(step + 1)}
            final = step == schedule.steps - 1 and epoch == per_step - 1
            report(step * per_step + epoch, metrics, payload, model=student if final else None)

        train_student(
            student,
            teacher,
            train_loader,
            config=loop_config(config, setup, epochs=per_step, seed=step),
            matching=matching_config(config),
            evaluate=evaluate,
            report=report_step,
            hooks=hooks,
            resume=state,
            device=device,
        )
        state = None


def unstructured_pruning_trainable(
    config: dict[str, Any], setup: TrialSetup, teacher_state: Mapping[str, Tensor]
) -> None:
    """Ray Tune function trainable: resumes from Tune's checkpoint, reports every epoch."""
    run_tune_trial(run_unstructured_pruning, config, setup, teacher_state)
