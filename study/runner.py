"""Run a study: teacher stage, then Ray Tune with OptunaSearch, tracked in MLflow.

spec -> teacher (trained or cached) -> Tuner(the method's trainable, OptunaSearch
multi-objective over the spec's search space, enqueued settings first, optional ASHA)
-> MLflow parent / teacher / trial runs -> Pareto table
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.spec import Spec
from study.teacher import prepare_teacher, trial_setup
from study.tracking import StudyTracker, tune_callback

__all__ = ["StudyOutcome", "run_study"]


@dataclass(frozen=True)
class StudyOutcome:
    """Where a finished study's results are, and where its wall time went.

    ``seconds`` is the whole study; ``teacher_seconds`` the teacher stage (training or loading
    and evaluating it), ``ray_init_seconds`` starting local Ray (0 when it was running) and
    ``tune_seconds`` ``Tuner.fit``, i.e. the trials and everything Tune does around them
    (``bench.sweep_overhead`` compares it with the trials' own training and evaluation time).
    """

    parent_run_id: str
    trials: int
    failed: int
    seconds: float
    teacher_seconds: float = 0.0
    ray_init_seconds: float = 0.0
    tune_seconds: float = 0.0


def _sampler(spec: Spec) -> Any:
    import optuna

    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.NSGAIISampler(
        seed=spec.seed, population_size=max(4, spec.max_concurrent * 2)
    )


def _num_classes(spec: Spec) -> int:
    from trainables.trial import build_split

    setup = trial_setup(spec, num_classes=1)
    return build_split(
        setup, setup.eval_split, 1 if spec.dataset.name == "shapes" else None
    ).num_classes


def run_study(spec: Spec, *, spec_text: str) -> StudyOutcome:
    """Run ``spec`` to completion; returns where its results are."""
    import ray
    from ray import tune

    from study.search import DistinctOptunaSearch
    from trainables.registry import get_trainable

    started = time.monotonic()
    storage = Path(spec.storage_path).expanduser().resolve()
    tracker = StudyTracker(spec.tracking_uri, spec)
    parent = tracker.start_study(spec_text)
    failed = True
    started_ray = False
    try:
        num_classes = _num_classes(spec)
        teacher_started = time.monotonic()
        teacher = prepare_teacher(spec, num_classes=num_classes, cache_dir=storage / "teachers")
        teacher_seconds = time.monotonic() - teacher_started
        teacher_run = tracker.log_teacher(
            teacher.metrics,
            {"arch": spec.teacher.arch, "width": str(spec.teacher.width),
             "weights": str(teacher.path), "cache_key": teacher.key},
            weights=teacher.path,
        )  # fmt: skip
        setup = trial_setup(spec, num_classes=num_classes)
        ray_started = time.monotonic()
        if not ray.is_initialized():
            ray.init(address=spec.ray_address, include_dashboard=False, log_to_driver=True)
            started_ray = True
        ray_init_seconds = time.monotonic() - ray_started
        objectives = list(spec.objectives)
        searcher = DistinctOptunaSearch(
            space=spec.search_space.define_by_run,
            metric=objectives,
            mode=[spec.objectives[m] for m in objectives],
            points_to_evaluate=[dict(p) for p in spec.enqueue] or None,
            sampler=_sampler(spec),
        )
        scheduler = None
        if spec.scheduler is not None:
            scheduler = tune.schedulers.ASHAScheduler(
                metric=spec.scheduler.metric, mode=spec.scheduler.mode, max_t=spec.epochs,
                grace_period=spec.scheduler.grace_period,
                reduction_factor=spec.scheduler.reduction_factor,
            )  # fmt: skip
        resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
        trainable = tune.with_resources(
            tune.with_parameters(
                get_trainable(spec.method), setup=setup, teacher_state=teacher.state
            ),
            resources,
        )
        # Every epoch checkpoints (num_to_keep=1), so with short epochs Tune snapshots its state
        # every few seconds and warns each time; on local or shared storage that is cheap.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=spec.trials,
                max_concurrent_trials=spec.max_concurrent,
                # A fresh actor per trial re-imports torch, Ray and apc (about 6 s each).
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=str(storage),
                callbacks=[tune_callback(tracker, method=spec.method, teacher_run_id=teacher_run)],
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=1,
            ),
        )
        tune_started = time.monotonic()
        grid = tuner.fit()
        tune_seconds = time.monotonic() - tune_started
        failed = False
        return StudyOutcome(
            parent, len(grid), grid.num_errors, time.monotonic() - started,
            teacher_seconds=teacher_seconds, ray_init_seconds=ray_init_seconds,
            tune_seconds=tune_seconds,
        )  # fmt: skip
    finally:
        tracker.end_study(failed=failed)
        if started_ray:
            ray.shutdown()
