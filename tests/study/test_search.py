"""DistinctOptunaSearch against a real Optuna study: repeats are answered, not run."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from study.search import DistinctOptunaSearch


def _space(trial: optuna.Trial) -> None:
    trial.suggest_categorical("student_width", [2, 4, 8])


def _searcher(**kwargs: Any) -> DistinctOptunaSearch:
    return DistinctOptunaSearch(
        space=_space, metric="map", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0), **kwargs,
    )  # fmt: skip


def _study(searcher: DistinctOptunaSearch) -> optuna.Study:
    study = searcher._ot_study
    assert isinstance(study, optuna.Study)
    return study


def test_each_configuration_runs_once_until_the_space_is_exhausted() -> None:
    searcher = _searcher()
    first = searcher.suggest("t1")
    second = searcher.suggest("t2")  # t1 still running: its repeat is skipped too
    assert first is not None
    assert second is not None
    assert first != second
    searcher.on_trial_complete("t1", {"map": 10.0})
    searcher.on_trial_complete("t2", {"map": 20.0})
    third = searcher.suggest("t3")
    assert third is not None
    assert {first["student_width"], second["student_width"], third["student_width"]} == {2, 4, 8}
    searcher.on_trial_complete("t3", {"map": 30.0})

    trials = _study(searcher).trials
    ran = {
        first["student_width"]: 10.0,
        second["student_width"]: 20.0,
        third["student_width"]: 30.0,
    }
    assert len(trials) > 3  # the random sampler repeated itself, and was answered
    for trial in trials:
        # a repeat of a finished trial was told that trial's value; one of a running trial, FAIL
        assert trial.state in (TrialState.COMPLETE, TrialState.FAIL)
        if trial.state == TrialState.COMPLETE:
            assert trial.values == [ran[trial.params["student_width"]]]

    # Exhausted: after max_retries repeats the searcher gives up and runs one.
    fourth = searcher.suggest("t4")
    assert fourth is not None
    assert fourth["student_width"] in {2, 4, 8}


def test_no_retries_behaves_like_ray() -> None:
    searcher = _searcher(max_retries=0)
    configs = [searcher.suggest(f"t{i}") for i in range(12)]
    assert len({c["student_width"] for c in configs if c is not None}) <= 3
    assert len(_study(searcher).trials) == 12  # nothing told behind Ray's back


def test_max_retries_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_retries: must be an integer >= 0, got -1"):
        _searcher(max_retries=-1)


def test_a_repeat_of_a_running_trial_is_told_fail_then_runs_when_nothing_else_is_left() -> None:
    def one_choice(trial: optuna.Trial) -> None:
        trial.suggest_categorical("w", [2])

    searcher = DistinctOptunaSearch(
        space=one_choice, metric="map", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0), max_retries=3,
    )  # fmt: skip
    assert searcher.suggest("t1") == {"w": 2}
    assert searcher.suggest("t2") == {"w": 2}  # the only configuration, after 3 skipped asks
    states = [t.state for t in _study(searcher).trials]
    assert states == [TrialState.RUNNING, *[TrialState.FAIL] * 3, TrialState.RUNNING]


def test_a_trial_stopped_early_is_pruned_not_completed_with_its_early_values() -> None:
    """ASHA's early stops: the under-trained values never enter the sampler's population."""
    searcher = _searcher(iterations=3)
    assert searcher.suggest("early") is not None
    assert searcher.suggest("full") is not None
    searcher.on_trial_complete("early", {"map": 5.0, "training_iteration": 1})
    searcher.on_trial_complete("full", {"map": 40.0, "training_iteration": 3})
    by_value = {tuple(t.values or ()): t.state for t in _study(searcher).trials}
    assert by_value == {(): TrialState.PRUNED, (40.0,): TrialState.COMPLETE}


def test_without_iterations_a_short_trial_completes() -> None:
    searcher = _searcher()
    assert searcher.suggest("t") is not None
    searcher.on_trial_complete("t", {"map": 5.0, "training_iteration": 1})
    assert [t.state for t in _study(searcher).trials] == [TrialState.COMPLETE]
