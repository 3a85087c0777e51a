"""The searcher stack as Ray Tune drives it: wrappers over the public Searcher interface, Tune's
own ConcurrencyLimiter and SearchGenerator above them, and the one adapter that relies on Ray's
private attributes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import ray.cloudpickle
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from study.samplers import SamplerRecipe
from study.search import (
    OPTUNA_SEARCH_INTERNALS,
    RAY_TESTED,
    DistinctOptunaSearch,
    DistinctSearcher,
    NanSafeSearcher,
    RebuildingOptunaSearch,
    optuna_study,
)


def _one_choice(trial: optuna.Trial) -> None:
    trial.suggest_categorical("w", [2])


def _two_choices(trial: optuna.Trial) -> None:
    trial.suggest_categorical("w", [2, 4])


def _searcher(space: Any = _two_choices, **kwargs: Any) -> DistinctOptunaSearch:
    return DistinctOptunaSearch(
        space=space,
        metric="map",
        mode="max",
        sampler=SamplerRecipe(name="random", seed=0),
        **kwargs,
    )


@pytest.mark.parametrize("name", OPTUNA_SEARCH_INTERNALS)
def test_rays_optuna_search_has_the_private_attributes_the_adapter_relies_on(name: str) -> None:
    searcher = OptunaSearch(
        space=_one_choice, metric="map", mode="max", sampler=optuna.samplers.RandomSampler()
    )
    assert hasattr(searcher, name), (
        f"ray {ray.__version__}: ray.tune.search.optuna.OptunaSearch has no attribute {name!r}, "
        f"which study.search.RebuildingOptunaSearch relies on (tested with ray{RAY_TESTED})"
    )


def test_the_stack_is_the_nan_policy_over_the_distinct_one_over_the_adapter() -> None:
    searcher = _searcher(iterations=3, max_retries=5)
    assert isinstance(searcher, NanSafeSearcher)
    assert isinstance(searcher.searcher, DistinctSearcher)
    assert isinstance(searcher.searcher.searcher, RebuildingOptunaSearch)
    assert (searcher.metric, searcher.mode) == ("map", "max")
    assert (searcher.iterations, searcher.searcher.max_retries) == (3, 5)


def test_a_wrapper_takes_only_a_searcher() -> None:
    with pytest.raises(TypeError, match=r"searcher: must be a ray.tune.search.Searcher, got dict"):
        DistinctSearcher({})  # type: ignore[arg-type]


def test_results_of_a_trial_asked_again_reach_the_trial_that_runs() -> None:
    """A repeat is a trial of its own to the searcher below: results go to the one that runs."""
    searcher = _searcher(space=_one_choice, max_retries=3)
    assert searcher.suggest("t1") == {"w": 2}
    searcher.on_trial_complete("t1", {"map": 5.0})
    assert searcher.suggest("t2") == {"w": 2}  # after 3 repeats answered with t1's value
    searcher.on_trial_result("t2", {"map": 1.0, "training_iteration": 1})
    searcher.on_trial_complete("t2", {"map": 6.0})
    trials = optuna_study(searcher).trials
    assert [(t.state, t.values) for t in trials] == [(TrialState.COMPLETE, [5.0])] * 4 + [
        (TrialState.COMPLETE, [6.0])
    ]
    assert trials[-1].intermediate_values == {1: 1.0}


def test_a_repeat_of_a_pruned_trial_runs_and_one_of_a_nan_trial_is_told_the_worst_value() -> None:
    """The distinct layer sees what the NaN layer told the sampler, not what the trial reported."""
    searcher = _searcher(space=_one_choice, max_retries=1, iterations=3)
    searcher.suggest("early")
    searcher.on_trial_complete("early", {"map": 5.0, "training_iteration": 1})
    searcher.suggest("nan")  # the pruned trial's configuration is no finished one: it runs
    searcher.on_trial_complete("nan", {"map": math.nan, "training_iteration": 3})
    searcher.suggest("again")  # a repeat of the NaN trial: told its worst value, then runs
    states = [(t.state, t.values) for t in optuna_study(searcher).trials]
    assert states == [
        (TrialState.PRUNED, None),
        (TrialState.COMPLETE, [-math.inf]),
        (TrialState.COMPLETE, [-math.inf]),
        (TrialState.RUNNING, None),
    ]


def _tune_stack(**kwargs: Any) -> SearchGenerator:
    """What tune.Tuner builds from TuneConfig(search_alg=..., max_concurrent_trials=2)."""
    return SearchGenerator(ConcurrencyLimiter(_searcher(**kwargs), max_concurrent=2))


def _apc(stack: SearchGenerator) -> DistinctOptunaSearch:
    limiter = stack.searcher
    assert isinstance(limiter, ConcurrencyLimiter)
    assert isinstance(limiter.searcher, DistinctOptunaSearch)
    return limiter.searcher


def test_tunes_concurrency_limiter_and_search_generator_forward_to_the_stack() -> None:
    stack = _tune_stack()
    assert stack.metric == "map"
    limiter = stack.searcher
    assert isinstance(limiter, Searcher)
    assert limiter.suggest("t1") is not None
    assert limiter.suggest("t2") is not None
    assert limiter.suggest("t3") is None  # two running: the limiter holds the third back
    limiter.on_trial_complete("t1", {"map": 1.0})
    limiter.on_trial_complete("t2", {"map": 2.0})
    assert [t.state for t in optuna_study(stack).trials] == [TrialState.COMPLETE] * 2


def test_a_tune_snapshot_restores_every_layer_and_a_running_trial(tmp_path: Path) -> None:
    """SearchGenerator.save_to_dir: each wrapper's get_state, the base searcher's save."""
    stack = _tune_stack(space=_one_choice, max_retries=2)
    limiter = stack.searcher
    assert limiter.suggest("t1") == {"w": 2}
    limiter.on_trial_complete("t1", {"map": 1.0})
    # Two repeats of t1 answered, then the third ask runs: still running at the snapshot.
    assert limiter.suggest("t2") == {"w": 2}
    stack.save_to_dir(str(tmp_path), session_str="s")

    fresh = _tune_stack(space=_one_choice, max_retries=2)
    fresh.restore_from_dir(str(tmp_path))
    assert _apc(fresh)._finished_values == _apc(stack)._finished_values == {'{"w": 2}': [1.0]}
    assert isinstance(fresh.searcher, ConcurrencyLimiter)
    assert fresh.searcher.live_trials == {"t2"}
    fresh.searcher.on_trial_complete("t2", {"map": 2.0})  # reaches the Optuna trial that ran
    states = [(t.state, t.values) for t in optuna_study(fresh).trials]
    assert states == [(TrialState.COMPLETE, [1.0])] * 3 + [(TrialState.COMPLETE, [2.0])]
    assert _apc(fresh)._finished_values == {'{"w": 2}': [2.0]}


def test_the_tune_stack_round_trips_through_ray_cloudpickle() -> None:
    """Tuner start and Tuner.restore pickle the whole search_alg, Tune's wrappers included."""
    stack = _tune_stack()
    stack.searcher.suggest("t1")
    restored = ray.cloudpickle.loads(ray.cloudpickle.dumps(stack))  # type: ignore[no-untyped-call]
    assert isinstance(restored, SearchGenerator)
    restored.searcher.on_trial_complete("t1", {"map": 3.0})
    assert [t.values for t in optuna_study(restored).trials] == [[3.0]]
    assert [t.state for t in optuna_study(stack).trials] == [TrialState.RUNNING]


def test_the_adapter_refuses_a_ray_without_its_private_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = OptunaSearch.__init__

    def without_trials(self: OptunaSearch, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._ot_trials

    monkeypatch.setattr(OptunaSearch, "__init__", without_trials)
    with pytest.raises(RuntimeError, match=r"OptunaSearch has no _ot_trials; .* tested with ray"):
        _searcher()
