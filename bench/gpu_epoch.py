"""One training epoch of the paper's KD + SWA trial per precision, and where its time goes.

    python -m bench.gpu_epoch [--device cuda|cpu] [--images N] [--eval-images N]
                              [--image-size 227] [--batch 64] [--workers N] [--modes ...]
                              [--warmup 2] [--rounds 1] [--root VOC_ROOT]

The trial (``study/presets/paper_kd.yaml``'s ``{matching: swa, student_width: 8}``): a
VGG16_bn teacher (width 1) and a VGG16_bn/8 student from :func:`trainables.models.build_model`
with seeded random weights (the bench times, it does not learn: nothing is downloaded), batch
64 at 227 px, KD (T=4, alpha=0.9) + beta * SWA (beta 1.0 in this loss's units, top-1 class),
SGD with momentum 0.9 and weight decay 5e-4 at lr 1e-3 (the paper's 0.1 costs the same per
step but may diverge from random weights, which would end the epoch early). The data: ``N``
images of VOC's sizes written by :func:`trainables.data.voc_tree.write_voc_tree` into a
temporary folder (``--root``: an existing VOC 2012 tree instead, the real one for instance),
read through the trial's own loaders (:func:`trainables.trial.make_loaders`:
``VOCMultiLabel`` train with its random resized crop and flip, DataLoader workers, pinned
memory on CUDA), evaluated on ``seg_val`` under the paper's ``official`` protocol
(:func:`trainables.trial.make_evaluator`). Defaults: on CUDA ``N`` = 5717 (VOC 2012 train)
and 1449 evaluation images (VOC's ``seg_val``); on the CPU 128 and 20 (an epoch of the full
set would take hours). ``--workers`` defaults to what ``num_workers: auto`` gives this
machine (:func:`trainables.precision.auto_num_workers`).

Modes (:class:`trainables.precision.AcceleratorOptions`): ``fp32`` (TF32 matrix products on
CUDA, as the loop runs it), ``bf16`` (autocast) and ``bf16_channels_last``. channels_last is
CUDA-only (:class:`~trainables.precision.Accelerator` ignores it on the CPU), so on the CPU
the default modes are ``fp32`` and ``bf16`` and the summary says why the third is left out.

Per mode and round, in one process, modes in turn (so drift hits all alike):

1. ``--warmup`` training steps, untimed (cuDNN's autotuner, allocator, worker start-up);
2. an instrumented epoch: :func:`trainables.loop.train_student` has no per-phase hooks, so
   this is a faithful timed replica of its step, built from the same public functions in the
   same order (:meth:`Accelerator.images`/``tensor``, ``autocast``,
   :func:`~trainables.models.forward_features`/``forward_head``,
   :func:`~trainables.matching.teacher_targets`, :func:`~trainables.losses.distillation_loss`
   on widened logits, :func:`~trainables.matching.matching_loss`, the loss read on the host,
   ``zero_grad``/``backward``/``step``), with a device synchronisation at every phase
   boundary: ``data`` (waiting on the loader, worker start-up included), ``to_device``,
   ``student_forward``, ``teacher`` (its forward pass and maps: the train split augments,
   so the loop never builds the teacher cache for it), ``kd_loss``, ``matching`` (the SWA
   loss's forward, the head-only second-order graph included; its share of the backward pass
   is in ``backward``) and ``backward`` (backward pass and optimiser step);
3. one epoch of the real :func:`~trainables.loop.train_student` (fresh student and teacher):
   its reported ``time_train_s`` is ``epoch_s`` and ``images_per_s``, its ``time_eval_s`` the
   evaluation pass. The replica's synchronisations cost some overlap, so its total
   (``instrumented_epoch_s``) is a little above ``epoch_s``; its shares are what it is for.

``bound`` is ``data`` when the replica waited on the loader longer than it computed, else
``compute``. Each line of output is a JSON object with the command, the date, the device
(GPU name), torch's version; one per mode, the last a summary with the ratios to fp32. On
CUDA every line also holds the goal of issue #16 next to the measured figure: one epoch of
the 5717 VOC train images in at most 5 s on one H200 (``goal_images_per_s``: 5717 / 5; the
paper: 100 s on 4 TITAN Xp).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench._common import emit, environment, median
from trainables.data.voc_tree import MIN_SPLIT_IMAGES, write_voc_tree
from trainables.loop import DivergedError, LoopConfig, Optimization, TrainState, train_student
from trainables.losses import distillation_loss
from trainables.matching import MatchingConfig, matching_loss, teacher_targets
from trainables.models import build_model, forward_features, forward_head
from trainables.precision import (
    Accelerator,
    AcceleratorOptions,
    auto_num_workers,
    training_device,
    widen,
)
from trainables.trial import TrialSetup, make_evaluator, make_loaders

BENCH: Final = "gpu_epoch"
NUM_CLASSES: Final = 20
#: VOC 2012's Main train and Segmentation val sizes: the CUDA defaults.
VOC_TRAIN: Final = 5717
VOC_SEG_VAL: Final = 1449
CPU_IMAGES: Final = 128
CPU_EVAL_IMAGES: Final = MIN_SPLIT_IMAGES
#: Issue #16's goal: the VOC train epoch in at most this many seconds on one H200 ...
GOAL_EPOCH_S: Final = 5.0
#: ... against the paper's (Park et al. 2020) on 4 TITAN Xp.
PAPER_EPOCH_S: Final = 100.0
BETA: Final = 1.0  # SWA's beta 50 in the official code's units (docs/method.md#loss-units)
LR: Final = 1e-3
MATCHING: Final = MatchingConfig(kind="swa")
MODES: Final[dict[str, AcceleratorOptions]] = {
    "fp32": AcceleratorOptions(precision="fp32", channels_last=False),
    "bf16": AcceleratorOptions(precision="bf16", channels_last=False),
    "bf16_channels_last": AcceleratorOptions(precision="bf16", channels_last=True),
}
CUDA_ONLY: Final = {"bf16_channels_last": "channels_last is CUDA-only (ignored on the CPU)"}
PHASES: Final = (
    "data",
    "to_device",
    "student_forward",
    "teacher",
    "kd_loss",
    "matching",
    "backward",
)
#: Phases that are not waiting on the loader.
COMPUTE: Final = PHASES[1:]


class _Phases:
    """Wall seconds per phase; every lap first waits for the device's queued work."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.last = time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self.sync()
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now


@dataclass
class _Models:
    teacher: nn.Module
    student: nn.Module


def _models(base: _Models) -> _Models:
    """Fresh copies of the seeded models (a mode's layout and training change them)."""
    return _Models(copy.deepcopy(base.teacher), copy.deepcopy(base.student))


def _optimizer(student: nn.Module) -> torch.optim.Optimizer:
    settings = _optimization()
    return torch.optim.SGD(
        student.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )


def _optimization() -> Optimization:
    return Optimization(optimizer="sgd", lr=LR, momentum=0.9, weight_decay=5e-4)


def _replica_pass(
    models: _Models,
    batches: Iterable[Mapping[str, Any]],
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    *,
    max_steps: int | None = None,
) -> tuple[dict[str, float], int, int]:
    """Steps of :func:`train_student`'s loop over ``batches``, timed per phase.

    Returns (seconds per phase, steps, images).
    """
    teacher, student = models.teacher, models.student
    settings = _optimization()
    scaler = accelerator.grad_scaler()
    generator = torch.Generator(device=accelerator.device).manual_seed(0)
    student.train()
    phases = _Phases(accelerator.device)
    steps = images_seen = 0
    phases.start()
    for batch in batches:  # the iterator's start (worker processes) counts as data
        phases.lap("data")
        images = accelerator.images(batch["image"])
        labels = accelerator.tensor(batch["labels"])
        phases.lap("to_device")
        with accelerator.autocast():
            features = forward_features(student, images)
            logits = forward_head(student, features)
            phases.lap("student_forward")
            targets = teacher_targets(teacher, images, labels, MATCHING, generator=generator)
            phases.lap("teacher")
            loss = distillation_loss(
                widen(logits),
                widen(targets.logits),
                labels,
                temperature=settings.kd_temperature,
                alpha=settings.kd_alpha,
                multi_label=True,
            )
            phases.lap("kd_loss")
            match = matching_loss(student, features, logits, targets, MATCHING, generator=generator)
            loss = loss + BETA * match
            phases.lap("matching")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergedError(f"loss is {value} at batch {steps}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        phases.lap("backward")
        steps += 1
        images_seen += int(images.shape[0])
        if max_steps is not None and steps >= max_steps:
            break
    return phases.seconds, steps, images_seen


def _instrumented(
    base: _Models,
    train_loader: DataLoader[Any],
    options: AcceleratorOptions,
    device: torch.device,
    warmup: int,
) -> tuple[dict[str, float], int, int]:
    """``warmup`` untimed steps, then one timed replica epoch (fresh models, as the loop's)."""
    accelerator = Accelerator.on(device, options)
    models = _models(base)
    accelerator.prepare(models.student)
    accelerator.prepare(models.teacher).eval().requires_grad_(False)
    optimizer = _optimizer(models.student)
    if warmup > 0:
        _replica_pass(models, train_loader, accelerator, optimizer, max_steps=warmup)
    return _replica_pass(models, train_loader, accelerator, optimizer)


def _real_epoch(
    base: _Models,
    train_loader: DataLoader[Any],
    eval_loader: DataLoader[Any],
    options: AcceleratorOptions,
    device: torch.device,
) -> dict[str, float]:
    """One epoch of :func:`train_student` with the trial's evaluator: its reported metrics."""
    models = _models(base)
    reports: list[dict[str, float]] = []

    def report(_epoch: int, metrics: dict[str, float], _state: TrainState) -> None:
        reports.append(metrics)

    train_student(
        models.student,
        models.teacher,
        train_loader,
        config=LoopConfig(
            epochs=1,
            optimization=_optimization(),
            beta=BETA,
            multi_label=True,
            accelerator=options,
        ),
        matching=MATCHING,
        evaluate=make_evaluator(
            eval_loader,
            multi_label=True,
            device=device,
            accelerator=options,
            protocol="official",
        ),
        report=report,
        device=device,
    )
    return reports[-1]


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)


def _setup(root: Path, args: argparse.Namespace) -> TrialSetup:
    return TrialSetup(
        dataset="voc2012",
        dataset_options={"root": str(root), "image_size": args.image_size},
        num_classes=NUM_CLASSES,
        arch="vgg16_bn",
        teacher_width=1,
        epochs=1,
        eval_split="seg_val",
        batch_size=args.batch,
        optimization=_optimization(),
        num_workers=args.workers,
        evaluation_protocol="official",
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--images", type=int, default=None, help="training images (the epoch)")
    parser.add_argument("--eval-images", type=int, default=None, help="seg_val images")
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=None)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per mode")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the modes (median)")
    parser.add_argument("--root", type=Path, default=None, help="an existing VOC 2012 tree")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else training_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (run on a GPU machine)")
    cuda = device.type == "cuda"
    args.device = device
    if args.images is None:
        args.images = VOC_TRAIN if cuda else CPU_IMAGES
    if args.eval_images is None:
        args.eval_images = VOC_SEG_VAL if cuda else CPU_EVAL_IMAGES
    if args.workers is None:
        args.workers = auto_num_workers(os.cpu_count() or 1)
    if args.warmup is None:
        args.warmup = 2 if cuda else 1
    if args.modes is None:
        args.modes = [m for m in MODES if cuda or m not in CUDA_ONLY]
    args.skipped = {} if cuda else {m: CUDA_ONLY[m] for m in MODES if m in CUDA_ONLY}
    if not cuda:
        asked = [m for m in args.modes if m in CUDA_ONLY]
        if asked:
            parser.error(f"--modes {' '.join(asked)}: {CUDA_ONLY[asked[0]]}; use --device cuda")
    if args.root is None and (
        args.images < MIN_SPLIT_IMAGES or args.eval_images < MIN_SPLIT_IMAGES
    ):
        parser.error(f"--images and --eval-images must be >= {MIN_SPLIT_IMAGES} (write_voc_tree)")
    if min(args.image_size, args.batch, args.rounds) < 1 or min(args.workers, args.warmup) < 0:
        parser.error("--image-size, --batch, --rounds >= 1; --workers, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    device: torch.device = args.device
    cuda = device.type == "cuda"
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m bench.gpu_epoch", *map(shlex.quote, given)])
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    with contextlib.ExitStack() as stack:
        if args.root is not None:
            root = args.root.expanduser().resolve()
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apc-epoch-")))
            started = time.perf_counter()
            write_voc_tree(
                root,
                train=args.images,
                val=args.eval_images,
                segmented_train=MIN_SPLIT_IMAGES,
                segmented_val=args.eval_images,
                seed=args.seed,
            )
            print(
                f"VOC tree: {args.images} + {args.eval_images} images "
                f"in {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        train_loader, eval_loader = make_loaders(_setup(root, args), device=device)
        torch.manual_seed(args.seed)
        base = _Models(
            teacher=build_model("vgg16_bn", num_classes=NUM_CLASSES, image_size=args.image_size),
            student=build_model(
                "vgg16_bn", num_classes=NUM_CLASSES, image_size=args.image_size, width_divisor=8
            ),
        )
        load_before = os.getloadavg()[0]
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in args.modes}
        peaks: dict[str, float | None] = {}
        for index in range(args.rounds):
            for mode in args.modes:
                options = MODES[mode]
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                phases, steps, seen = _instrumented(
                    base, train_loader, options, device, args.warmup
                )
                real = _real_epoch(base, train_loader, eval_loader, options, device)
                peaks[mode] = _peak_gib(device)
                runs[mode].append(
                    {
                        **{f"{p}_s": s for p, s in phases.items()},
                        "instrumented_epoch_s": sum(phases.values()),
                        "epoch_s": real["time_train_s"],
                        "eval_s": real["time_eval_s"],
                        "steps": steps,
                        "train_images": seen,
                    }
                )
                print(
                    f"round {index + 1}/{args.rounds} {mode}: epoch "
                    f"{real['time_train_s']:.2f} s, eval {real['time_eval_s']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
        load_after = os.getloadavg()[0]
        eval_count = len(eval_loader.dataset)  # type: ignore[arg-type]
        train_count = len(train_loader.dataset)  # type: ignore[arg-type]

    env = environment(str(device))
    common: dict[str, Any] = {
        "command": command,
        "date": date,
        "images": train_count,
        "eval_images": eval_count,
        "image_size": args.image_size,
        "batch": args.batch,
        "workers": args.workers,
        "teacher": "vgg16_bn/1 (random weights)",
        "student": "vgg16_bn/8",
        "matching": f"kd + {BETA} * swa (top1)",
    }
    goal = {"goal_epoch_s": GOAL_EPOCH_S, "goal_images_per_s": round(VOC_TRAIN / GOAL_EPOCH_S, 1)}
    rates: dict[str, float] = {}
    epochs: dict[str, float] = {}
    for mode, rows in runs.items():
        figures = {key: median([row[key] for row in rows]) for key in rows[0]}
        trained = figures["train_images"]
        rates[mode] = trained / figures["epoch_s"]
        epochs[mode] = figures["epoch_s"]
        total = figures["instrumented_epoch_s"]
        compute = sum(figures[f"{p}_s"] for p in COMPUTE)
        record: dict[str, Any] = {
            "bench": BENCH,
            "mode": mode,
            "precision": MODES[mode].precision,
            "channels_last": MODES[mode].channels_last and cuda,
            "images_per_s": round(rates[mode], 1),
            "epoch_s": round(figures["epoch_s"], 3),
        }
        if cuda:
            record.update(goal)
            record["meets_goal"] = rates[mode] >= VOC_TRAIN / GOAL_EPOCH_S
            record["paper_epoch_s"] = PAPER_EPOCH_S
        record.update(
            {
                "eval_s": round(figures["eval_s"], 3),
                "instrumented_epoch_s": round(total, 3),
                "phases_s": {p: round(figures[f"{p}_s"], 3) for p in PHASES},
                "phases_share": {p: round(figures[f"{p}_s"] / total, 3) for p in PHASES},
                "bound": "data" if figures["data_s"] > compute else "compute",
                "teacher_cache": False,
                "steps": int(figures["steps"]),
                "train_images_per_epoch": int(trained),
                "rounds": [round(row["epoch_s"], 3) for row in rows],
                "peak_gpu_memory_gib": peaks[mode],
                **common,
                **env,
            }
        )
        emit(record)
    fastest = max(rates, key=rates.__getitem__)
    summary: dict[str, Any] = {"bench": BENCH, "summary": True}
    if "fp32" in rates:
        summary["speedup_over_fp32"] = {
            mode: round(rates[mode] / rates["fp32"], 3) for mode in rates if mode != "fp32"
        }
        summary["epoch_s_over_fp32"] = {
            mode: round(epochs[mode] / epochs["fp32"], 3) for mode in epochs if mode != "fp32"
        }
    summary["fastest"] = fastest
    summary["fastest_images_per_s"] = round(rates[fastest], 1)
    summary["fastest_projected_voc_epoch_s"] = round(VOC_TRAIN / rates[fastest], 2)
    if cuda:
        summary.update(goal)
        summary["meets_goal"] = rates[fastest] >= VOC_TRAIN / GOAL_EPOCH_S
        summary["paper_epoch_s"] = PAPER_EPOCH_S
    else:
        summary["note"] = (
            "CPU run: the goal (5717 images in 5 s on one H200) is a GPU figure; "
            "run make bench-gpu on one"
        )
    summary["modes_left_out"] = args.skipped
    summary["loadavg_1m_before_after"] = [round(load_before, 2), round(load_after, 2)]
    summary.update({**common, **env})
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
