"""Run a study: teacher stage, then Ray Tune with OptunaSearch, tracked in MLflow.

spec -> teacher (trained or cached) -> Tuner(the method's trainable, OptunaSearch
multi-objective over the spec's search space, enqueued settings first, optional ASHA)
-> MLflow parent / teacher / trial runs -> Pareto table

:func:`resume_study` finishes a study whose driver died: it reads the spec the study ran with
from its MLflow parent run, restores Tune's experiment (``Tuner.restore``: finished trials stay
finished, unfinished ones continue from their last checkpoint, and the Optuna searcher comes
back with its state) and keeps logging into the same runs.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from study.lifecycle import (
    LOCK_FILE,
    LifecycleError,
    discard_never_tuned,
    driver_lock,
    run_refusals,
    study_state,
)
from study.plan import plan_study
from study.samplers import SamplerRecipe
from study.spec import Spec, SpecError, absolute_paths, parse_spec
from study.teacher import TeacherResult, prepare_teacher
from study.tracking import EFFECTIVE_SPEC_FILE, StudyTracker, find_study, tune_callback

if TYPE_CHECKING:
    from study.search import DistinctOptunaSearch
    from trainables.trial import TrialSetup

__all__ = [
    "ResumeError",
    "StudyOutcome",
    "build_scheduler",
    "build_searcher",
    "effective_spec_text",
    "resume_study",
    "run_problems",
    "run_study",
    "tune_storage",
]

#: The spool of MLflow records a study could not deliver, in its local folder.
PENDING_FILE = "mlflow-pending.jsonl"
#: How long the end of a study waits for an unreachable tracking server.
FLUSH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class StudyOutcome:
    """Where a finished study's results are, and where its wall time went.

    ``seconds`` is the whole study; ``teacher_seconds`` the teacher stage (training or loading
    and evaluating it), ``ray_init_seconds`` starting local Ray (0 when it was running) and
    ``tune_seconds`` ``Tuner.fit``, i.e. the trials and everything Tune does around them
    (``bench.sweep_overhead`` compares it with the trials' own training and evaluation time).
    ``complete`` is False when Tune stopped before every trial ended (e.g. Ctrl-C): the study
    can be finished with ``apc resume``. ``unlogged`` records could not reach MLflow and wait
    in ``spool`` for ``apc resume``; ``mlflow_outage_s`` is how long records waited for an
    unreachable tracking server (and were then delivered, unless ``unlogged``); ``quarantined``
    records MLflow refused are kept with their reasons in ``quarantine``.
    """

    parent_run_id: str
    trials: int
    failed: int
    seconds: float
    teacher_seconds: float = 0.0
    ray_init_seconds: float = 0.0
    tune_seconds: float = 0.0
    complete: bool = True
    unlogged: int = 0
    spool: Path | None = None
    mlflow_outage_s: float = 0.0
    quarantined: int = 0
    quarantine: Path | None = None


def sampler_recipe(spec: Spec) -> SamplerRecipe:
    """The spec's sampler; NSGA-II's generation spans two rounds of concurrent trials."""
    return SamplerRecipe(
        name=spec.sampler, seed=spec.seed, population_size=max(4, spec.max_concurrent * 2)
    )


class ResumeError(LifecycleError):
    """``apc resume`` cannot continue the study: one message per problem."""


def tune_storage(storage_path: str) -> tuple[str, Path]:
    """Tune's storage (a local folder made absolute, or a ``scheme://`` URI as given) and the
    local folder for the teacher cache and MLflow spools (``~/.cache/apc`` for a URI)."""
    if "://" in storage_path:
        return storage_path, Path("~/.cache/apc").expanduser()
    local = Path(storage_path).expanduser().resolve()
    return str(local), local


def effective_spec_text(data: Mapping[str, object], *, base_dir: Path) -> str:
    """The spec as a study runs it, for ``apc resume``: ``data`` with overrides applied and
    every path made absolute by the spec's path rule from ``base_dir``, the spec's folder
    (:func:`study.spec.absolute_paths`: the data set root, the teacher checkpoint, a search
    space file, the storage folder, an SQLite tracking file), so it means the same from any
    working directory and loads again by the same rule."""
    effective = absolute_paths(data, base_dir=base_dir)
    # Absent from the spec, the storage folder is the working folder's (as run_study takes it).
    effective["storage_path"] = tune_storage(str(effective.get("storage_path", "apc_results")))[0]
    return yaml.safe_dump(effective, sort_keys=False)


def _prepare(spec: Spec, local: Path) -> tuple[TeacherResult, float, TrialSetup]:
    plan = plan_study(spec)
    started = time.monotonic()
    teacher = prepare_teacher(spec, plan=plan, cache_dir=local / "teachers")
    return teacher, time.monotonic() - started, plan.trial


def _log_teacher(tracker: StudyTracker, spec: Spec, teacher: TeacherResult) -> str:
    params = {
        "arch": spec.teacher.arch,
        "width": str(spec.teacher.width),
        "weights": str(teacher.path),
        "cache_key": teacher.key,
    }
    return tracker.log_teacher(teacher.metrics, params, weights=teacher.path)


def _start_ray(spec: Spec) -> tuple[bool, float]:
    import ray

    started = time.monotonic()
    if ray.is_initialized():
        return False, 0.0
    # A cluster given by --ray-address, or by RAY_ADDRESS (what `ray job submit` sets for its
    # driver); else a Ray of its own ("local": never a cluster that happens to run here).
    address = spec.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, include_dashboard=False, log_to_driver=True)
    return True, time.monotonic() - started


def _trainable(spec: Spec, setup: TrialSetup, teacher: TeacherResult) -> Any:
    from ray import tune

    from trainables.registry import get_trainable

    resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
    return tune.with_resources(
        tune.with_parameters(get_trainable(spec.method), setup=setup, teacher_state=teacher.state),
        resources,
    )


def build_searcher(spec: Spec) -> DistinctOptunaSearch:
    """The study's searcher: the spec's space, objectives, enqueued points and sampler."""
    from study.search import DistinctOptunaSearch

    objectives = list(spec.objectives)
    return DistinctOptunaSearch(
        space=spec.search_space.define_by_run,
        metric=objectives,
        mode=[spec.objectives[m] for m in objectives],
        points_to_evaluate=[dict(p) for p in spec.enqueue] or None,
        sampler=sampler_recipe(spec),
        iterations=spec.epochs if spec.scheduler is not None else None,
    )


def build_scheduler(spec: Spec) -> Any:
    """The study's trial scheduler: None (every trial runs its epochs), Ray's ASHA on
    ``scheduler.metric``, or :class:`study.schedulers.MultiObjectiveASHA` (``mo_asha``)."""
    if spec.scheduler is None:
        return None
    if spec.scheduler.name == "mo_asha":
        from study.schedulers import MultiObjectiveASHA

        return MultiObjectiveASHA(
            objectives=spec.objectives,
            max_t=spec.epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    from ray import tune

    return tune.schedulers.ASHAScheduler(
        metric=spec.scheduler.metric,
        mode=spec.scheduler.mode,
        max_t=spec.epochs,
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
    )


def _tuner(spec: Spec, trainable: Any, storage: str, callback: Any) -> Any:
    from ray import tune

    from study.schedulers import MultiObjectiveASHA, SchedulerSnapshot

    scheduler = build_scheduler(spec)
    callbacks = [callback]
    if isinstance(scheduler, MultiObjectiveASHA):
        # Tune snapshots callbacks, not schedulers: the rungs survive `apc resume` this way.
        callbacks.append(SchedulerSnapshot(scheduler))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(spec),
            scheduler=scheduler,
            num_samples=spec.trials,
            max_concurrent_trials=spec.max_concurrent,
            # A fresh actor per trial re-imports torch, Ray and apc (about 6 s each).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage,
            callbacks=callbacks,
            # A trial whose worker or node dies restarts from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=2),
            # Two, not one: a killed driver's last snapshot of the experiment may name the
            # checkpoint before a trial's newest, and Tune refuses to restore a trial whose
            # named checkpoint is gone. Snapshots are at most TUNE_GLOBAL_CHECKPOINT_S apart.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )


def _driver_environment() -> None:
    # Every epoch checkpoints, so with short epochs Tune snapshots its state every few seconds
    # and warns each time; on local or shared storage that is cheap.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the experiment (trial states, checkpoints, searcher) at least every second
    # instead of Tune's adaptive 10 s or more: `apc resume` restores from the last snapshot,
    # and with two checkpoints kept it names one that still exists unless a trial finished
    # two epochs within that second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # MLflow retries a failed request for minutes by default; the log queue retries on its own
    # (study.log_queue), so a request gives up sooner and the queue keeps its order.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # A progress bar for one small spec file is noise between the messages of `apc resume`.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _fit(
    spec: Spec,
    tracker: StudyTracker,
    tuner: Any,
    *,
    started: float,
    teacher_seconds: float,
    ray_init_seconds: float,
) -> StudyOutcome:
    tune_started = time.monotonic()
    grid = tuner.fit()
    tune_seconds = time.monotonic() - tune_started
    complete = grid.num_terminated + grid.num_errors >= spec.trials
    unlogged = tracker.close(status="FINISHED" if complete else "KILLED", timeout_s=FLUSH_TIMEOUT_S)
    return StudyOutcome(
        tracker.parent_run_id,
        len(grid),
        grid.num_errors,
        time.monotonic() - started,
        teacher_seconds=teacher_seconds,
        ray_init_seconds=ray_init_seconds,
        tune_seconds=tune_seconds,
        complete=complete,
        unlogged=unlogged,
        spool=tracker.spool if unlogged else None,
        mlflow_outage_s=tracker.outage_s,
        quarantined=tracker.quarantined,
        quarantine=tracker.quarantine if tracker.quarantined else None,
    )


def _experiment(spec: Spec) -> tuple[str, Path, str, Path]:
    """Tune's storage, the local folder, the study's Tune experiment and its MLflow spool."""
    storage, local = tune_storage(spec.storage_path)
    return storage, local, f"{storage.rstrip('/')}/{spec.name}", local / spec.name / PENDING_FILE


def run_problems(spec: Spec) -> list[str]:
    """Why ``apc run`` may not start ``spec`` under its name (study.lifecycle); [] if it may."""
    _, _, experiment, spool = _experiment(spec)
    state = study_state(spec.tracking_uri, spec.name, experiment=experiment, spool=spool)
    return run_refusals(
        state, name=spec.name, tracking_uri=spec.tracking_uri, experiment=experiment
    )


def run_study(spec: Spec, *, spec_text: str, effective_text: str = "") -> StudyOutcome:
    """Run ``spec`` to completion; returns where its results are.

    ``spec_text`` is the spec file as written; ``effective_text`` the spec as run
    (:func:`effective_spec_text`), which ``apc resume`` needs (default: ``spec_text``).

    Raises:
        LifecycleError: the name is taken (:func:`run_problems`) or another driver holds it.
    """
    started = time.monotonic()
    _driver_environment()
    storage, local, experiment, spool = _experiment(spec)
    with driver_lock(local / spec.name, name=spec.name):
        state = study_state(spec.tracking_uri, spec.name, experiment=experiment, spool=spool)
        problems = run_refusals(
            state, name=spec.name, tracking_uri=spec.tracking_uri, experiment=experiment
        )
        if problems:
            raise LifecycleError(problems)
        if state.never_tuned:
            discard_never_tuned(spec.tracking_uri, state.parent, spool=spool)
        tracker = StudyTracker(
            spec.tracking_uri, name=spec.name, objectives=spec.objectives, spool=spool
        )
        tracker.start_study(spec, spec_text, effective_text or spec_text)
        with _driving(spec, tracker) as start_ray:
            teacher, teacher_seconds, setup = _prepare(spec, local)
            teacher_run = _log_teacher(tracker, spec, teacher)
            ray_init_seconds = start_ray()
            callback = tune_callback(
                tracker,
                method=spec.method,
                teacher_run_id=teacher_run,
                iterations=spec.epochs if spec.scheduler is not None else None,
            )
            tuner = _tuner(spec, _trainable(spec, setup, teacher), storage, callback)
            return _fit(
                spec,
                tracker,
                tuner,
                started=started,
                teacher_seconds=teacher_seconds,
                ray_init_seconds=ray_init_seconds,
            )


@contextlib.contextmanager
def _driving(spec: Spec, tracker: StudyTracker) -> Iterator[Callable[[], float]]:
    """The driver's hold on a study it runs or resumes: yields ``start_ray()`` (Ray for
    ``spec``, or the cluster it names; returns the seconds it took). Whatever escapes marks the
    study run FAILED (its queued records spooled within 10 s); a Ray this driver started is
    shut down however the block ends."""
    started_ray = False

    def start_ray() -> float:
        nonlocal started_ray
        started_ray, seconds = _start_ray(spec)
        return seconds

    try:
        yield start_ray
    except BaseException:
        tracker.close(status="FAILED", timeout_s=10.0)
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def load_study_spec(name: str, *, tracking_uri: str) -> tuple[Spec, str]:
    """The spec study ``name`` ran with (from its parent run) and that run's id.

    Raises:
        ResumeError: no such study, it is finished, or its spec cannot be read.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _driver_environment()
    run = find_study(tracking_uri, name)
    if run is None:
        raise ResumeError([f"name: no study {name!r} in {tracking_uri}"])
    parent = str(run.info.run_id)
    try:
        text = MlflowClient(tracking_uri=tracking_uri).download_artifacts(
            parent, EFFECTIVE_SPEC_FILE
        )
        data = yaml.safe_load(Path(text).read_text("utf-8"))
    except (MlflowException, OSError, yaml.YAMLError) as error:
        raise ResumeError(
            [
                f"name: study {name!r} (run {parent}) has no readable {EFFECTIVE_SPEC_FILE} "
                f"to resume from ({error})"
            ]
        ) from None
    if isinstance(data, dict):
        data["tracking_uri"] = tracking_uri  # where it was found, whatever the spec said
    try:
        spec = parse_spec(data)
    except SpecError as error:
        raise ResumeError([f"{EFFECTIVE_SPEC_FILE}: {p}" for p in error.problems]) from None
    spool = tune_storage(spec.storage_path)[1] / spec.name / PENDING_FILE
    if run.info.status == "FINISHED" and not spool.is_file():
        raise ResumeError([f"name: study {name!r} is finished (run {parent}); nothing to resume"])
    return spec, parent


def _tune_trials(experiment: str) -> list[dict[str, Any]]:
    """What Tune's storage holds of each trial in its last snapshot of ``experiment``: id,
    config, status, every reported result (``result.json``) and the latest checkpoint.

    A torn line of a ``result.json`` (its node died mid-write) is skipped with a warning:
    the results before it are whole, and MLflow may hold the lost one already.
    """
    import pyarrow.fs
    from ray.tune import ExperimentAnalysis

    from study.log_queue import read_json_lines

    trials = []
    for trial in ExperimentAnalysis(experiment).trials:
        path = str(trial.path)
        if "://" in path:
            filesystem, folder = pyarrow.fs.FileSystem.from_uri(path)
        else:
            filesystem, folder = pyarrow.fs.LocalFileSystem(), path
        try:
            with filesystem.open_input_stream(f"{folder}/result.json") as stream:
                text = stream.readall().decode("utf-8")
        except (FileNotFoundError, OSError):
            text = ""  # no result yet
        results = read_json_lines(text, source=f"{path}/result.json").records
        trials.append(
            {
                "trial": trial.trial_id,
                "config": dict(trial.config),
                "status": trial.status,
                "results": results,
                "checkpoint": trial.checkpoint,
            }
        )
    return trials


def resume_study(name: str, *, tracking_uri: str) -> tuple[Spec, StudyOutcome]:
    """Finish the interrupted study ``name`` recorded in ``tracking_uri``.

    Finished trials are not run again; trials that were running continue from their last
    checkpoints; the searcher continues with its state; records an earlier run could not
    deliver to MLflow are delivered first.

    Raises:
        ResumeError: see :func:`load_study_spec`, or Tune has no state to restore.
        StudyLockedError: another driver runs the study.
    """
    from study.preflight import preflight, tracking_problems

    started = time.monotonic()
    unreachable = tracking_problems(tracking_uri)
    if unreachable:
        raise ResumeError([p.replace("tracking_uri:", "--tracking-uri:", 1) for p in unreachable])
    spec, parent = load_study_spec(name, tracking_uri=tracking_uri)
    problems = preflight(spec)
    if problems:
        raise ResumeError(problems)
    _, local, experiment, spool = _experiment(spec)
    if not (local / spec.name / LOCK_FILE).exists():
        # No driver ever ran here: refuse before the lock file would be written.
        _require_tune_state(spec, experiment)
    with driver_lock(local / spec.name, name=spec.name):
        return spec, _resume_locked(
            spec, parent, experiment=experiment, local=local, spool=spool, started=started
        )


def _require_tune_state(spec: Spec, experiment: str) -> None:
    from ray import tune

    if not tune.Tuner.can_restore(experiment):
        raise ResumeError(
            [
                f"name: study {spec.name!r} has no Tune state in {experiment} to resume: its "
                "driver stopped before the trials started, so nothing is lost; run it again "
                f"under its name (`apc run SPEC --name {spec.name}`), or check that the storage "
                "path did not move"
            ]
        )


def _resume_locked(
    spec: Spec, parent: str, *, experiment: str, local: Path, spool: Path, started: float
) -> StudyOutcome:
    from ray import tune

    _require_tune_state(spec, experiment)
    # Read before the study run is marked running again: what Tune's storage holds cannot
    # fail a resume half-way.
    trials = _tune_trials(experiment)
    tracker = StudyTracker(
        spec.tracking_uri, name=spec.name, objectives=spec.objectives, spool=spool
    )
    replayed = tracker.attach(parent)
    if replayed:
        print(f"apc resume: delivering {replayed} MLflow records kept from before")
    with _driving(spec, tracker) as start_ray:
        teacher, teacher_seconds, setup = _prepare(spec, local)
        teacher_run = tracker.teacher_run()
        if teacher_run is None:  # the driver died during the teacher stage
            teacher_run = _log_teacher(tracker, spec, teacher)
        tracker.backfill(trials, method=spec.method, teacher_run_id=teacher_run)
        ray_init_seconds = start_ray()
        tuner = tune.Tuner.restore(
            experiment,
            trainable=_trainable(spec, setup, teacher),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        return _fit(
            spec,
            tracker,
            tuner,
            started=started,
            teacher_seconds=teacher_seconds,
            ray_init_seconds=ray_init_seconds,
        )
