"""NaN or missing objectives reach Optuna as their worst value and are tagged in MLflow.

Real Ray ``OptunaSearch`` (under apc's wrappers), real Optuna studies, a real SQLite MLflow store;
the searcher is driven through the calls Ray's controller makes (``suggest``, then
``on_trial_complete``), which need no running Ray.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study.objectives import NAN_TAG, sampler_substitutes, tag_text, worst_value
from study.presets import DEMO_SPEC
from study.runner import sampler_recipe
from study.samplers import SAMPLERS
from study.search import NanSafeOptunaSearch, optuna_study
from study.spec import Spec, load_spec
from study.tracking import StudyTracker, tune_callback

OBJECTIVES = {"map": "max", "attr_auc": "max", "params": "min"}


def _spec(*overrides: str) -> Spec:
    return load_spec(DEMO_SPEC, overrides=overrides)


def _searcher(spec: Spec, cls: Callable[..., Searcher] = NanSafeOptunaSearch) -> Searcher:
    """The searcher as the runner builds it (the spec's space, objectives and sampler)."""
    recipe = sampler_recipe(spec)
    # Ray's own OptunaSearch takes a sampler object; apc's searchers take its recipe.
    sampler: Any = recipe.build() if cls is OptunaSearch else recipe
    return cls(
        space=spec.search_space.define_by_run,
        metric=list(spec.objectives),
        mode=list(spec.objectives.values()),
        sampler=sampler,
    )


def _study(searcher: Searcher) -> optuna.Study:
    # Ray's own OptunaSearch (the upstream behaviour pinned below) keeps its study private.
    study = searcher._ot_study if type(searcher) is OptunaSearch else optuna_study(searcher)
    assert isinstance(study, optuna.Study)
    return study


def test_worst_values_are_infinities_of_the_direction() -> None:
    assert worst_value("max") == -math.inf
    assert worst_value("min") == math.inf


def test_substitutes_name_each_unusable_objective_and_why() -> None:
    result = {"map": 40.0, "attr_auc": math.nan, "params": None}
    substitutes = sampler_substitutes(result, OBJECTIVES)  # type: ignore[arg-type]
    assert list(substitutes) == ["attr_auc", "params"]
    assert substitutes["attr_auc"].value == -math.inf
    assert "predicts no positive label" in substitutes["attr_auc"].reason
    assert substitutes["params"] == (math.inf, "missing from the trial's final result")
    assert tag_text(substitutes).splitlines() == [
        f"attr_auc: {substitutes['attr_auc'].reason}; the sampler was told -inf",
        "params: missing from the trial's final result; the sampler was told inf",
    ]
    # Usable values, and results that hold no objective at all, need no substitute.
    assert sampler_substitutes({"map": 1.0, "attr_auc": 2.0, "params": 3.0}, OBJECTIVES) == {}  # type: ignore[arg-type]
    assert sampler_substitutes({"loss": 1.0}, OBJECTIVES) == {}  # type: ignore[arg-type]
    assert sampler_substitutes(None, OBJECTIVES) == {}  # type: ignore[arg-type]


def test_ray_optuna_search_alone_loses_such_trials() -> None:
    """Pins the upstream behaviour NanSafeOptunaSearch works around (Ray 2.60, Optuna 5)."""
    searcher = _searcher(_spec(), OptunaSearch)
    searcher.suggest("nan")
    searcher.suggest("nothing")
    searcher.on_trial_complete("nan", {"map": 30.0, "attr_auc": math.nan, "params": 500.0})
    searcher.on_trial_complete("nothing", {"trial_id": "nothing"})
    states = [t.state for t in _study(searcher).trials]
    assert states == [TrialState.RUNNING] * 2  # never told: lost to the sampler


def test_nan_objective_is_told_as_the_worst_value(caplog: pytest.LogCaptureFixture) -> None:
    searcher = _searcher(_spec())
    config = searcher.suggest("t0")
    assert config is not None
    assert "matching" in config
    with caplog.at_level(logging.INFO, logger="study.search"):
        searcher.on_trial_complete("t0", {"map": 30.0, "attr_auc": math.nan, "params": 500.0})
    trial = _study(searcher).trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [30.0, -math.inf, 500.0]
    assert "attr_auc=-inf" in caplog.text


@pytest.mark.parametrize(
    ("result", "values"),
    [
        ({"map": 30.0, "params": 500.0}, [30.0, -math.inf, 500.0]),  # key absent
        ({"map": None, "attr_auc": 70.0, "params": 500.0}, [-math.inf, 70.0, 500.0]),
        ({"map": math.nan, "attr_auc": math.nan, "params": math.nan}, [-math.inf] * 2 + [math.inf]),
    ],
)
def test_missing_or_none_objectives_are_told_as_the_worst_value(
    result: dict[str, Any], values: list[float]
) -> None:
    searcher = _searcher(_spec())
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", result)
    trial = _study(searcher).trials[0]
    assert (trial.state, trial.values) == (TrialState.COMPLETE, values)


def test_trials_with_nothing_measured_keep_rays_states() -> None:
    """No objective at all: PRUNED without an error (Ray alone loses it), FAIL with one."""
    searcher = _searcher(_spec())
    searcher.suggest("stopped")
    searcher.suggest("failed")
    searcher.on_trial_complete("stopped", {"loss": 1.0})
    searcher.on_trial_complete("failed", None, error=True)
    states = [t.state for t in _study(searcher).trials]
    assert states == [TrialState.PRUNED, TrialState.FAIL]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_keeps_searching_after_worst_values(sampler: str) -> None:
    """Optuna accepts +/-inf in multi-objective tell and its samplers go on suggesting."""
    spec = _spec(f"sampler={sampler}", "enqueue=[]")
    searcher = _searcher(spec)
    for i in range(14):
        config = searcher.suggest(f"t{i}")
        assert config is not None
        auc = math.nan if i % 3 == 0 else 50.0 + i
        searcher.on_trial_complete(f"t{i}", {"map": 20.0 + i, "attr_auc": auc, "params": 100.0 * i})
    trials = _study(searcher).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 14
    assert [t.values[1] for t in trials[::3]] == [-math.inf] * 5
    assert searcher.suggest("next") is not None


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> StudyTracker:
    """A study's parent run in a fresh SQLite store (creating the schema takes seconds)."""
    root: Path = tmp_path_factory.mktemp("nan_mlflow")
    spec = _spec("name=nan_study", f"tracking_uri=sqlite:///{root}/mlflow.db")
    tracker = StudyTracker(
        spec.tracking_uri, name=spec.name, objectives=spec.objectives, spool=root / "spool.jsonl"
    )
    tracker.start_study(spec, "name: nan_study\n", "name: nan_study\n")
    return tracker


def _ended_trial(tracker: StudyTracker, trial_id: str, final: dict[str, Any]) -> Any:
    """A real Tune ``Trial`` (a stub: nothing runs) taken through the driver's callback."""
    from ray.tune.experiment import Trial

    trial = Trial(
        "distillation_trainable", config={"matching": "none"}, trial_id=trial_id, stub=True
    )
    callback = tune_callback(tracker, method="distillation", teacher_run_id="teacher")
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epoch, result in enumerate([{"map": 10.0, "attr_auc": math.nan, "params": 9.0}, final]):
        result = {**result, "epoch": epoch, "time_train_s": 1.5, "time_eval_s": 0.5}
        trial.update_last_result(result)  # type: ignore[no-untyped-call]
        callback.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result=result)
    callback.on_trial_complete(iteration=2, trials=[trial], trial=trial)
    assert tracker.flush(30.0)
    return tracker.client.get_run(tracker.trial_runs[trial_id])


def test_trial_run_is_tagged_and_logs_the_nan_metric(tracker: StudyTracker) -> None:
    run = _ended_trial(tracker, "nan_00000", {"map": 12.0, "attr_auc": math.nan, "params": 9.0})
    assert run.info.status == "FINISHED"
    # NaN is the latest value (not an earlier epoch's number), so `apc pareto` leaves it out.
    assert math.isnan(run.data.metrics["attr_auc"])
    assert run.data.metrics["map"] == 12.0
    tag = run.data.tags[NAN_TAG]
    assert tag.startswith("attr_auc: NaN: no correctly predicted (image, class) pair")
    assert tag.endswith("the sampler was told -inf")
    # The loop's timing keys are no canonical metrics: MLflow does not get them.
    assert not {"time_train_s", "time_eval_s", "epoch"} & set(run.data.metrics)


def test_trial_run_with_usable_objectives_has_no_tag(tracker: StudyTracker) -> None:
    run = _ended_trial(tracker, "ok_00001", {"map": 12.0, "attr_auc": 80.0, "params": 9.0})
    assert run.data.metrics["attr_auc"] == 80.0
    assert NAN_TAG not in run.data.tags
