"""Structured pruning: whole filters removed by L1 norm, then fine-tuned against the teacher.

The paper follows Li et al. (2016), "Pruning filters for efficient ConvNets": a filter's
importance is the L1 norm of its weights, each layer keeps its ``1 - rate`` most important
filters (one shot), and the network is rebuilt physically smaller. The rebuilding is
torch-pruning's :class:`DependencyGraph` (through ``MetaPruner``), not hand surgery, so every
layer that consumes a removed channel shrinks with it: the BN after the convolution, the next
convolution's input channels, ResNet's residual-coupled convolutions and shortcuts, and the
classifier's input columns (kept in their order, unlike the official code's ``repeat``).
Linear layers are never pruned themselves (the class count stays; the VGG head's hidden width
stays, as in the paper), only their inputs follow the convolutions.

Which convolutions are pruned (``scheme``, convolutions numbered from 1 in module order):

* ``paper``: VGG only, conv1 and every convolution of the last two stages at ``rate``: conv1
  and conv8-13 of VGG16 (Li et al.'s VGG-16 scheme, the paper's setting); VGG11: conv1, conv5-8;
* ``uniform``: every convolution at ``rate`` (any model);
* ``layers``: the listed convolution numbers at ``rate``;
* ``global``: one ranking over all convolutions' filters, each scored relative to its layer's
  mean L1 norm (raw norms grow with fan-in and would empty the first layers), ``rate`` of all
  filters removed, no layer losing more than ``max_layer_rate``.

In a ResNet, channels tied by a residual sum are one group: they are pruned together when any
of their convolutions is selected, scored by the first convolution of the group.

The trainable: the student is a pruned copy of the trained teacher, fine-tuned through
:func:`trainables.loop.train_student` with KD + beta * matching against the unpruned teacher.
Searched config: ``prune_rate`` (a channel fraction), ``matching``, ``beta``, ``drop_p``.
Study-wide options (the spec's ``method_options``): ``scheme``, ``layers``, ``max_layer_rate``.
A checkpoint holds the pruned student's state dict; resuming re-prunes the teacher (L1 pruning
of the same weights is deterministic) to rebuild the architecture, then loads it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import torch
from torch import Tensor, nn
from torchvision.models import vgg as tv_vgg

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
    "SCHEMES",
    "PrunedModel",
    "StructuredOptions",
    "conv_layers",
    "layer_rates",
    "paper_layers",
    "parse_options",
    "prune_structured",
    "run_structured_pruning",
    "structured_pruning_trainable",
]

Scheme = Literal["paper", "uniform", "layers", "global"]
SCHEMES: Final[tuple[Scheme, ...]] = ("paper", "uniform", "layers", "global")


@dataclass(frozen=True)
class StructuredOptions:
    """Study-wide settings of structured pruning (see the module docstring)."""

    scheme: Scheme = "uniform"
    layers: tuple[int, ...] = ()
    max_layer_rate: float = 0.9


def parse_options(
    options: Mapping[str, Any], *, epochs: int
) -> tuple[StructuredOptions, list[str]]:
    """The options of a spec's ``method_options``, with every problem ("key: rule, got v")."""
    del epochs  # one shot: any number of fine-tuning epochs works
    problems: list[str] = []
    default = StructuredOptions()
    known = tuple(StructuredOptions.__dataclass_fields__)
    for key in options:
        if key not in known:
            problems.append(
                f"{key}: unknown option of structured_pruning (valid: {', '.join(known)})"
            )
    scheme = options.get("scheme", default.scheme)
    if scheme not in SCHEMES:
        problems.append(f"scheme: must be one of {list(SCHEMES)}, got {scheme!r}")
        scheme = default.scheme
    raw_layers = options.get("layers", [])
    layers: tuple[int, ...] = ()
    if not isinstance(raw_layers, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in raw_layers
    ):
        problems.append(f"layers: must be a list of convolution numbers >= 1, got {raw_layers!r}")
    else:
        layers = tuple(raw_layers)
    if scheme == "layers" and not layers:
        problems.append(f"layers: scheme 'layers' needs a non-empty list, got {raw_layers!r}")
    if scheme != "layers" and layers:
        problems.append(
            f"layers: applies only to scheme 'layers', got {list(layers)} with {scheme!r}"
        )
    max_rate = options.get("max_layer_rate", default.max_layer_rate)
    if isinstance(max_rate, bool) or not isinstance(max_rate, int | float) or not 0 < max_rate < 1:
        problems.append(f"max_layer_rate: must be a number in (0, 1), got {max_rate!r}")
        max_rate = default.max_layer_rate
    return StructuredOptions(scheme, layers, float(max_rate)), problems


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The model's convolutions in module order (conv1 first), with their dotted names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def paper_layers(model: nn.Module) -> tuple[int, ...]:
    """Convolution numbers of the paper's scheme: conv1 and the last two stages (VGG only).

    Stages end at VGG's max-pools, including those that input-size adaptation replaced by
    ``Identity`` (the only ``Identity`` modules in ``features``). VGG16: (1, 8, 9, ..., 13).
    """
    if not isinstance(model, tv_vgg.VGG):
        raise ValueError(
            "scheme: 'paper' applies to VGG models (conv1 and the last two stages, Li et al.'s "
            f"VGG-16 scheme), got {type(model).__name__}; use uniform, layers or global"
        )
    stages: list[list[int]] = [[]]
    number = 0
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            number += 1
            stages[-1].append(number)
        elif isinstance(module, nn.MaxPool2d | nn.Identity):
            stages.append([])
    stages = [s for s in stages if s]
    return tuple(sorted({1, *stages[-2], *stages[-1]}))


def layer_rates(
    model: nn.Module, *, rate: float, scheme: Scheme, layers: Sequence[int] = ()
) -> dict[str, float]:
    """Convolution name -> pruning rate for the per-layer schemes (not ``global``)."""
    convs = conv_layers(model)
    if scheme == "uniform":
        numbers: Sequence[int] = range(1, len(convs) + 1)
    elif scheme == "paper":
        numbers = paper_layers(model)
    elif scheme == "layers":
        outside = [n for n in layers if not 1 <= n <= len(convs)]
        if outside or not layers:
            raise ValueError(
                f"layers: must be convolution numbers in [1, {len(convs)}], got {list(layers)}"
            )
        numbers = layers
    else:
        raise ValueError(f"scheme: must be one of {['paper', 'uniform', 'layers']}, got {scheme!r}")
    return {convs[n - 1][0]: rate for n in sorted(set(numbers))}


@dataclass(frozen=True)
class PrunedModel:
    """The result of :func:`prune_structured`.

    Attributes:
        model: the physically smaller copy, in eval mode on the CPU.
        removed: layer name -> removed output channel indices (of the unpruned layer), for
            every convolution and BN that lost channels.
        param_fraction: parameters of the pruned model over the original's.
    """

    model: nn.Module
    removed: dict[str, tuple[int, ...]]
    param_fraction: float


def prune_structured(
    model: nn.Module,
    *,
    rate: float,
    image_size: int,
    scheme: Scheme = "uniform",
    layers: Sequence[int] = (),
    max_layer_rate: float = 0.9,
) -> PrunedModel:
    """A copy of ``model`` with the lowest-L1 filters removed; ``model`` is left unchanged.

    Args:
        model: a VGG or ResNet from :func:`trainables.models.build_model`.
        rate: fraction of the selected convolutions' filters to remove, in [0, 1).
        image_size: side of the input, for tracing the graph with one [1, 3, S, S] image.
        scheme: which convolutions are pruned (module docstring).
        layers: convolution numbers (from 1) for scheme ``layers``.
        max_layer_rate: for ``global``, the largest fraction any one layer may lose.

    Returns:
        The pruned copy (forward: images [B, 3, S, S] -> logits [B, num_classes]) and what was
        removed. Deterministic: the same weights give the same architecture and weights.
    """
    import torch_pruning as tp

    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate: must be a channel fraction in [0, 1), got {rate}")
    pruned = copy.deepcopy(model).cpu().eval()
    names = {module: name for name, module in pruned.named_modules()}
    params_before = count_params(pruned)
    # Linear layers are never a group's root: their outputs stay, their inputs follow.
    linears = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    example = torch.zeros(1, 3, image_size, image_size)
    if scheme == "global":
        importance = tp.importance.MagnitudeImportance(
            p=1, normalizer="mean", group_reduction="first"
        )
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=importance,
            global_pruning=True,
            pruning_ratio=rate,
            max_pruning_ratio=max_layer_rate,
            ignored_layers=linears,
        )
    else:
        convs = dict(conv_layers(pruned))
        rates = layer_rates(pruned, rate=rate, scheme=scheme, layers=layers)
        # Li et al.: the L1 norm of each filter of the group's first convolution.
        importance = tp.importance.MagnitudeImportance(
            p=1, normalizer=None, group_reduction="first"
        )
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=importance,
            pruning_ratio=0.0,
            pruning_ratio_dict={convs[name]: r for name, r in rates.items() if r > 0},
            ignored_layers=linears,
        )
    removed: dict[str, tuple[int, ...]] = {}
    with torch.no_grad():
        for group in pruner.step(interactive=True):
            for dep, indices in group:
                module = dep.target.module
                if isinstance(
                    module, nn.Conv2d | nn.BatchNorm2d
                ) and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                    removed[names[module]] = tuple(sorted(int(i) for i in indices))
            group.prune()
    del pruner  # its graph holds references to every module of the pruned copy
    return PrunedModel(pruned, removed, count_params(pruned) / params_before)


def _prune_teacher(teacher: nn.Module, config: Mapping[str, Any], setup: TrialSetup) -> PrunedModel:
    options, problems = parse_options(setup.extra, epochs=setup.epochs)
    if problems:
        raise ValueError("method_options: " + "; ".join(problems))
    if "prune_rate" not in config:
        raise ValueError(
            f"prune_rate: is required by structured_pruning, got config {dict(config)}"
        )
    return prune_structured(
        teacher,
        rate=float(config["prune_rate"]),
        image_size=image_size(setup),
        scheme=options.scheme,
        layers=options.layers,
        max_layer_rate=options.max_layer_rate,
    )


def run_structured_pruning(
    config: Mapping[str, Any],
    setup: TrialSetup,
    teacher_state: Mapping[str, Tensor],
    *,
    report: CheckpointReporter,
    resume: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """One structured-pruning trial without Ray: prune the teacher, fine-tune, report.

    Every epoch's metrics carry the size metrics (``params``, ``param_fraction``, ``flops``...);
    the checkpoint payload is the loop's :class:`TrainState` as a dict.
    """
    device = torch.device(device)
    torch.manual_seed(setup.seed)
    teacher = build_teacher(setup, teacher_state)
    student = _prune_teacher(teacher, config, setup).model
    state = None if resume is None else TrainState.from_dict(resume)
    train_loader, eval_loader = make_loaders(setup, device=device)
    sizes = SizeProbe(
        image_size(setup),
        final_epoch=setup.epochs - 1,
        next_epoch=0 if state is None else state.epoch,
        reference_params=count_params(teacher),
    )

    def report_state(epoch: int, metrics: dict[str, float], train_state: TrainState) -> None:
        final = epoch == setup.epochs - 1
        report(epoch, metrics, train_state.as_dict(), model=student if final else None)

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
        report=report_state,
        hooks=CompressionHooks(size_metrics=sizes),
        resume=state,
        device=device,
    )


def structured_pruning_trainable(
    config: dict[str, Any], setup: TrialSetup, teacher_state: Mapping[str, Tensor]
) -> None:
    """Ray Tune function trainable: resumes from Tune's checkpoint, reports every epoch."""
    run_tune_trial(run_structured_pruning, config, setup, teacher_state)
