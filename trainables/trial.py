"""What every compression trainable shares: study-wide setup, data, teacher, Tune wrapper.

A trainable is ``run_<method>(config, setup, teacher_state, *, report, resume, device)``
(plain Python, testable without Ray) plus a thin Ray Tune function trainable made by
:func:`run_tune_trial`: it restores Tune's checkpoint, hands every epoch's metrics to
``tune.report`` with the checkpoint payload, and picks the device. Checkpoint payloads are
mappings of tensors and numbers saved with ``torch.save`` and read back with
``weights_only=True`` (never a pickle of code).

Tune keeps a trial's last checkpoints (``CheckpointConfig.num_to_keep``) as
``checkpoint_<index>`` folders of the trial's folder, one per report; :func:`restore_checkpoint`
reads the newest and, should it be unreadable (a file cut short, a disk error), the older kept
ones, newest first.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from trainables.data import build_dataset
from trainables.data.descriptors import dataset_descriptor
from trainables.data.registry import dataset_options
from trainables.data.sample import ImageDataset
from trainables.evaluation_protocol import evaluation_protocol, protocol_dataset_options
from trainables.export import MODEL_FILE, export_model
from trainables.loop import DivergedError, Evaluator, LoopConfig, Optimization
from trainables.matching import MatchingConfig
from trainables.models import build_model
from trainables.precision import Accelerator, AcceleratorOptions, loader_options, training_device

__all__ = [
    "CHECKPOINT_FILE",
    "FAILURE_KEY",
    "NODE_KEY",
    "CheckpointReporter",
    "RestoredCheckpoint",
    "TrialRun",
    "TrialSetup",
    "UnreadableCheckpointError",
    "build_split",
    "build_teacher",
    "image_size",
    "loop_config",
    "make_evaluator",
    "make_loaders",
    "matching_config",
    "quiet_checkpoint_log",
    "restore_checkpoint",
    "run_tune_trial",
    "save_payload",
]

CHECKPOINT_FILE = "state.pt"
#: Result key of the Ray node a trial ran on (a restarted trial may move to another node).
NODE_KEY = "node_id"
#: Result and checkpoint key of the reason a trial failed (a diverged loss).
FAILURE_KEY = "apc_failure"


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
        extra: method-specific settings (the spec's ``method_options``, e.g. a pruning scheme).
        headline: metrics reported first (the study's objectives), so Tune's status table,
            which shows a trial's first few metrics, shows these.
        attribution_methods: further attribution methods (besides Grad-CAM) whose metrics a
            trial measures with its last epoch (``attr_auc_lrp``...).
        overlay_images: evaluation images in a trial's attribution overlay (0: none).
        accelerator: precision and memory layout on the trial's device
            (:mod:`trainables.precision`).
        evaluation_protocol: ``apc`` or ``official`` (:mod:`trainables.evaluation_protocol`):
            the options ``eval_split`` is built with and where evaluation takes Grad-CAM.
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
    headline: tuple[str, ...] = ()
    attribution_methods: tuple[str, ...] = ()
    overlay_images: int = 8
    accelerator: AcceleratorOptions = field(default_factory=AcceleratorOptions)
    evaluation_protocol: str = "apc"


def image_size(setup: TrialSetup) -> int:
    """Side of the square input images of the study."""
    return int(setup.dataset_options.get("image_size", 224))


def build_split(setup: TrialSetup, split: str, size: int | None) -> ImageDataset:
    """The data set of ``split`` as the study configures it; ``eval_split`` with the
    evaluation protocol's options over the study's (``official`` on VOC: difficult objects
    count)."""
    options = dict(setup.dataset_options)
    if split == setup.eval_split:
        accepted = dataset_options(setup.dataset)
        options.update(protocol_dataset_options(setup.evaluation_protocol, accepted))
    if dataset_descriptor(setup.dataset).generated:
        options["seed"] = setup.seed
        if size is not None:
            options["size"] = size
    return build_dataset(setup.dataset, split=split, **options)


def make_loaders(
    setup: TrialSetup, *, device: torch.device | str = "cpu"
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Shuffled training batches and the evaluation split's batches, fed to ``device``
    (:func:`trainables.precision.loader_options`: pinned on CUDA; only the evaluation
    loader's workers persist, since a persistent shuffled loader would break resumes)."""
    train = build_split(setup, "train", setup.train_size)
    evaluation = build_split(setup, setup.eval_split, setup.val_size)
    workers = setup.num_workers
    return (
        DataLoader(
            train,
            batch_size=setup.batch_size,
            shuffle=True,
            drop_last=len(train) > setup.batch_size,
            **loader_options(device, num_workers=workers, persistent=False),
        ),
        DataLoader(
            evaluation,
            batch_size=setup.batch_size,
            shuffle=False,
            **loader_options(device, num_workers=workers, persistent=True),
        ),
    )


def make_evaluator(
    loader: DataLoader[Any],
    *,
    multi_label: bool,
    device: torch.device | str = "cpu",
    attribution_methods: tuple[str, ...] = ("grad_cam",),
    accelerator: AcceleratorOptions | None = None,
    protocol: str = "apc",
) -> Evaluator:
    """The loop's per-epoch evaluation: ``evaluate`` on ``loader``, metrics only, under
    ``accelerator``'s precision on ``device`` (None: fp32, plain copies), with Grad-CAM where
    evaluation ``protocol`` takes it (``TrialSetup.evaluation_protocol``)."""
    from trainables.evaluation import evaluate

    run_on = (
        Accelerator.plain(device) if accelerator is None else Accelerator.on(device, accelerator)
    )

    layer = evaluation_protocol(protocol).grad_cam_layer

    def run(model: nn.Module, teacher: nn.Module | None) -> dict[str, float]:
        result = evaluate(
            model,
            loader,
            teacher=teacher,
            multi_label=multi_label,
            attribution_methods=attribution_methods,
            accelerator=run_on,
            grad_cam_layer=layer,
        )
        return dict(result.metrics)

    return run


def build_teacher(setup: TrialSetup, teacher_state: Mapping[str, Tensor]) -> nn.Module:
    """The trained teacher on the CPU, in eval mode, from its state dict."""
    teacher = build_model(
        setup.arch,
        num_classes=setup.num_classes,
        image_size=image_size(setup),
        width_divisor=setup.teacher_width,
    )
    teacher.load_state_dict(dict(teacher_state))
    return teacher.eval()


def matching_config(config: Mapping[str, Any]) -> MatchingConfig:
    """The searched matching settings (``matching``, ``drop_p``) of a trial's config."""
    return MatchingConfig(
        kind=config.get("matching", "none"), drop_p=float(config.get("drop_p", 0.0))
    )


def loop_config(
    config: Mapping[str, Any], setup: TrialSetup, *, epochs: int | None = None, seed: int = 0
) -> LoopConfig:
    """The loop settings of a trial: the study's optimiser, the searched ``beta``.

    Args:
        config: the trial's searched values.
        setup: the study-wide settings.
        epochs: epochs of this run of the loop (default: the study's).
        seed: added to the study's seed (one loop run per pruning step gets its own shuffles).
    """
    return LoopConfig(
        epochs=setup.epochs if epochs is None else epochs,
        optimization=setup.optimization,
        beta=float(config.get("beta", 0.0)),
        multi_label=setup.multi_label,
        seed=setup.seed + seed,
        accelerator=setup.accelerator,
    )


class CheckpointReporter(Protocol):
    """``report(epoch, metrics, payload, model=...)`` after every epoch.

    ``payload`` is the checkpoint to resume from; ``model`` (the trained student) is passed
    with the trial's last epoch only, to be saved as the compressed model.
    """

    def __call__(
        self,
        epoch: int,
        metrics: dict[str, float],
        payload: Mapping[str, Any],
        /,
        *,
        model: nn.Module | None = None,
    ) -> None: ...


class TrialRun(Protocol):
    """A trainable's body: trains, calls ``report`` every epoch, resumes from a payload."""

    def __call__(
        self,
        config: Mapping[str, Any],
        setup: TrialSetup,
        teacher_state: Mapping[str, Tensor],
        *,
        report: CheckpointReporter,
        resume: Mapping[str, Any] | None,
        device: torch.device | str,
    ) -> None: ...


def _export(model: nn.Module, setup: TrialSetup, path: Path) -> None:
    try:
        export_model(model, image_size(setup), path)
    except Exception as error:  # tracing can fail on exotic models; the trial's results stand
        warnings.warn(f"export: the compressed model was not saved: {error}", stacklevel=2)


def _final_artifacts(
    model: nn.Module,
    setup: TrialSetup,
    teacher_state: Mapping[str, Tensor],
    folder: Path,
    device: torch.device | str,
) -> dict[str, float]:
    """Per-sample results, overlays and further attribution metrics of the final model
    (:mod:`trainables.trial_artifacts`); a failure costs these, not the trained trial.

    Measured at fp32 whatever the trial's precision: these are what the study's readers keep
    of the final model, and the further methods (LRP, EBP...) were written for fp32."""
    from trainables.trial_artifacts import write_final_artifacts

    try:
        evaluation = build_split(setup, setup.eval_split, setup.val_size)
        loader = DataLoader(
            evaluation,
            batch_size=setup.batch_size,
            shuffle=False,
            **loader_options(device, num_workers=setup.num_workers, persistent=False),
        )
        return write_final_artifacts(
            model.to(device),
            build_teacher(setup, teacher_state).to(device),
            loader,
            folder,
            multi_label=setup.multi_label,
            attribution_methods=setup.attribution_methods,
            overlay_images=setup.overlay_images,
            device=device,
            grad_cam_layer=evaluation_protocol(setup.evaluation_protocol).grad_cam_layer,
        )
    except Exception as error:
        warnings.warn(f"final evaluation artifacts were not written: {error!r}", stacklevel=2)
        return {}


class UnreadableCheckpointError(RuntimeError):
    """No checkpoint Tune kept of a trial can be read: the trial cannot resume."""


@dataclass(frozen=True)
class RestoredCheckpoint:
    """What a trial resumes from.

    Attributes:
        payload: the checkpoint's payload (as :func:`save_payload` wrote it).
        reports_behind: how many reports Tune holds past it (0: Tune's newest was read; n: an
            older checkpoint was, and the n reports after it are Tune's already).
    """

    payload: Mapping[str, Any]
    reports_behind: int = 0


#: Tune's name of a trial's checkpoint folders (``ray.train._internal.storage``).
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")


def save_payload(folder: Path, payload: Mapping[str, Any]) -> None:
    """Write checkpoint ``payload`` into ``folder``, as :func:`restore_checkpoint` reads it."""
    torch.save(dict(payload), folder / CHECKPOINT_FILE)


def _read_payload(checkpoint: Any) -> Mapping[str, Any]:
    with checkpoint.as_directory() as folder:
        payload = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
    if not isinstance(payload, Mapping):
        raise TypeError(f"{CHECKPOINT_FILE} holds a {type(payload).__name__}, not a mapping")
    return payload


def _kept_checkpoints(checkpoint: Any) -> list[tuple[Any, int]]:
    """``checkpoint`` and then the older checkpoints kept beside it, newest first, each with
    how many checkpoints (reports) it is older than ``checkpoint``."""
    import pyarrow.fs
    from ray import tune

    folder, _, name = checkpoint.path.rstrip("/").rpartition("/")
    newest = _CHECKPOINT_DIR.fullmatch(name)
    if newest is None or not folder:
        return [(checkpoint, 0)]  # not in a trial's folder: nothing beside it is Tune's
    try:
        entries = checkpoint.filesystem.get_file_info(
            pyarrow.fs.FileSelector(folder, allow_not_found=True)
        )
    except OSError:  # the listing fails like the read did: the newest is all there is
        return [(checkpoint, 0)]
    newest_index = int(newest.group(1))
    older = []
    for entry in entries:
        match = _CHECKPOINT_DIR.fullmatch(entry.base_name)
        if (
            match is not None
            and entry.type == pyarrow.fs.FileType.Directory
            and int(match.group(1)) < newest_index
        ):
            older.append((int(match.group(1)), entry.path))
    return [
        (checkpoint, 0),
        *(
            (tune.Checkpoint(path, filesystem=checkpoint.filesystem), newest_index - index)
            for index, path in sorted(older, reverse=True)
        ),
    ]


def restore_checkpoint(checkpoint: Any | None) -> RestoredCheckpoint | None:
    """What to resume a trial from: ``checkpoint`` (Tune's newest of the trial), or else the
    newest older kept checkpoint that can be read, with a warning; None for no checkpoint.

    An older checkpoint costs the epochs after it, which run again; failing instead would
    fail every retry of the trial the same way, since Tune hands each the same checkpoint.
    Tune counts on from the newest, so :func:`run_tune_trial` does not report those epochs
    again (:attr:`RestoredCheckpoint.reports_behind`): Tune has their results, and a
    scheduler that counts reports (ASHA's ``training_iteration``) keeps counting epochs.

    Raises:
        UnreadableCheckpointError: no kept checkpoint can be read; the message names each and
            why.
    """
    if checkpoint is None:
        return None
    problems = []
    for candidate, behind in _kept_checkpoints(checkpoint):
        try:
            payload = _read_payload(candidate)
        except Exception as error:  # whatever a damaged file raises (EOF, zip, unpickling)
            problems.append(f"{candidate.path}: {type(error).__name__}: {error}")
            continue
        if problems:
            warnings.warn(
                f"checkpoint: resuming from the older kept checkpoint {candidate.path}: the "
                f"newer cannot be read ({'; '.join(problems)}); the {behind} epoch(s) after it "
                "run again, unreported (Tune has their results)",
                stacklevel=2,
            )
        return RestoredCheckpoint(payload, behind)
    raise UnreadableCheckpointError(
        f"checkpoint: none of the {len(problems)} checkpoint(s) Tune kept of this trial can be "
        f"read, so it cannot resume ({'; '.join(problems)})"
    )


#: The loggers of Ray Train's storage, whose one INFO record is "Checkpoint successfully created
#: at: ..." (ray.train._internal.storage; the v2 one for Ray Train v2).
_CHECKPOINT_LOGGERS: Final = (
    "ray.train._internal.storage",
    "ray.train.v2._internal.execution.storage",
)


def quiet_checkpoint_log() -> None:
    """Keep Ray's per-checkpoint INFO line out of the driver's terminal.

    A trial checkpoints every epoch, and its worker logs each one; Ray forwards worker output
    to the driver, so a study printed a line per trial epoch (72 in the demo) between Tune's
    status tables. The level is raised on those loggers only, in the trial's own process,
    so that their warnings and everything else still reach the terminal.
    """
    for name in _CHECKPOINT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_tune_trial(
    run: TrialRun,
    config: Mapping[str, Any],
    setup: TrialSetup,
    teacher_state: Mapping[str, Tensor],
) -> None:
    """Run ``run`` as a Ray Tune function trainable: resume, report with checkpoints.

    Must be called inside a Tune trial. The teacher's weights arrive through Ray's object store
    (``tune.with_parameters``), so no trial retrains or reloads the teacher from disk. The last
    epoch's checkpoint also holds the compressed model, exported (:mod:`trainables.export`).
    Every result carries the Ray ``node_id`` the trial ran on. The last checkpoint also holds
    the final model's per-sample results and attribution overlays, and the last result its
    further attribution metrics (:mod:`trainables.trial_artifacts`). A trial restored from an
    unreadable checkpoint resumes from an older kept one (:func:`restore_checkpoint`).

    A diverging trial (:class:`~trainables.loop.DivergedError`) reports one last result with
    NaN objectives and the reason under :data:`FAILURE_KEY`, checkpoints that reason instead of
    weights, and raises. Tune's retries then restore that checkpoint and fail again at once
    with the same reason: retrying a diverged run from its last good epoch would only repeat
    the epoch that diverged, at full cost, before failing the same way.
    """
    import ray
    from ray import tune

    quiet_checkpoint_log()
    torch.set_num_threads(max(1, setup.threads))
    restored = restore_checkpoint(tune.get_checkpoint())
    resume = restored.payload if restored is not None else None
    # Epochs re-run after an older checkpoint: Tune already counted their reports.
    unreported = restored.reports_behind if restored is not None else 0
    if resume is not None and FAILURE_KEY in resume:
        raise DivergedError(str(resume[FAILURE_KEY]))
    node_id = ray.get_runtime_context().get_node_id()
    next_epoch = int(resume["epoch"]) if resume is not None and "epoch" in resume else 0

    def send(
        metrics: Mapping[str, Any], payload: Mapping[str, Any], model: nn.Module | None
    ) -> None:
        with tempfile.TemporaryDirectory() as folder:
            save_payload(Path(folder), payload)
            if model is not None:
                _export(model, setup, Path(folder) / MODEL_FILE)
                final = _final_artifacts(model, setup, teacher_state, Path(folder), device)
                metrics = {**final, **metrics}
            first = {name: metrics[name] for name in setup.headline if name in metrics}
            tune.report(
                {**first, **metrics, NODE_KEY: node_id},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    def report(
        epoch: int,
        metrics: dict[str, float],
        payload: Mapping[str, Any],
        /,
        *,
        model: nn.Module | None = None,
    ) -> None:
        nonlocal next_epoch, unreported
        if unreported and model is None:  # the last epoch's model is always sent
            unreported -= 1
        else:
            send({**metrics, "epoch": epoch}, payload, model)
        next_epoch = epoch + 1

    device = training_device()
    try:
        run(config, setup, teacher_state, report=report, resume=resume, device=device)
    except DivergedError as error:
        nan = float("nan")
        last = {**dict.fromkeys(setup.headline, nan), "loss": nan, "epoch": next_epoch}
        send({**last, FAILURE_KEY: str(error)}, {FAILURE_KEY: str(error)}, None)
        raise
