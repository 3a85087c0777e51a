"""DistinctOptunaSearch against a real Optuna study: repeats are answered, not run, and the
searcher survives the pickling Ray Tune does to it under every sampler a spec accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import ray.cloudpickle
from optuna.trial import TrialState

from study.presets import DEMO_SPEC
from study.runner import build_searcher
from study.samplers import SAMPLERS, SamplerRecipe
from study.search import DistinctOptunaSearch, optuna_study
from study.spec import load_spec


def _space(trial: optuna.Trial) -> None:
    trial.suggest_categorical("student_width", [2, 4, 8])


def _searcher(**kwargs: Any) -> DistinctOptunaSearch:
    return DistinctOptunaSearch(
        space=_space,
        metric="map",
        mode="max",
        sampler=SamplerRecipe(name="random", seed=0),
        **kwargs,
    )


def _study(searcher: DistinctOptunaSearch) -> optuna.Study:
    study = optuna_study(searcher)
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
        space=one_choice,
        metric="map",
        mode="max",
        sampler=SamplerRecipe(name="random", seed=0),
        max_retries=3,
    )
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


# --- pickling: what Ray Tune does to the searcher (Tuner start, snapshots, Tuner.restore) ---


def _configured(sampler: str) -> DistinctOptunaSearch:
    """The searcher exactly as `apc run` configures it for the demo spec and this sampler."""
    return build_searcher(load_spec(DEMO_SPEC, overrides=[f"sampler={sampler}"]))


def _run_trials(searcher: DistinctOptunaSearch, ids: range) -> list[dict[str, Any]]:
    """Suggest and complete one trial per id with values that depend on the configuration."""
    configs = []
    for i in ids:
        config = searcher.suggest(f"t{i}")
        assert isinstance(config, dict), f"trial t{i}: the searcher suggested {config!r}"
        width = float(config["student_width"])
        result = {"map": 40.0 + width, "attr_auc": 0.5 - 0.01 * width, "params": 1e4 * width}
        searcher.on_trial_complete(f"t{i}", {**result, "training_iteration": 2})
        configs.append(config)
    return configs


def _cloudpickle_round_trip(searcher: DistinctOptunaSearch) -> DistinctOptunaSearch:
    """What Ray does when the Tuner starts and on Tuner.restore: ray.cloudpickle both ways."""
    restored = ray.cloudpickle.loads(ray.cloudpickle.dumps(searcher))  # type: ignore[no-untyped-call]
    assert isinstance(restored, DistinctOptunaSearch)
    return restored


def _history(searcher: DistinctOptunaSearch) -> list[tuple[int, Any, dict[str, Any]]]:
    return [(t.number, t.state, t.params) for t in _study(searcher).trials]


def _generations(searcher: DistinctOptunaSearch) -> list[int]:
    return [
        value
        for t in _study(searcher).trials
        for key, value in t.system_attrs.items()
        if key.endswith(":generation")
    ]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_configured_searcher_round_trips_through_ray_cloudpickle(sampler: str) -> None:
    """Optuna 5.1's NSGAIISampler holds a lock; the searcher pickles under every sampler."""
    searcher = _configured(sampler)
    _run_trials(searcher, range(8))
    before = _history(searcher)

    restored = _cloudpickle_round_trip(searcher)

    assert isinstance(restored, DistinctOptunaSearch)
    assert _history(restored) == before  # the sampler's history came along
    assert restored._finished_values == searcher._finished_values
    assert type(_study(restored).sampler) is type(_study(searcher).sampler)
    assert _study(restored).sampler is not _study(searcher).sampler
    _run_trials(restored, range(8, 14))  # and it keeps suggesting
    assert len(_study(restored).trials) >= 14
    assert _history(restored)[: len(before)] == before
    assert len(_history(searcher)) == len(before)  # the original was left alone
    if sampler == "nsga2":
        # The rebuilt NSGA-II continues the generations (a fresh one would start at 0 again).
        assert max(_generations(restored)) > max(_generations(searcher))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_an_experiment_snapshot_restores_into_a_new_searcher(sampler: str, tmp_path: Path) -> None:
    """Tune's save_to_dir / restore_from_dir, as in snapshots and `apc resume`."""
    searcher = _configured(sampler)
    _run_trials(searcher, range(6))
    searcher.save_to_dir(str(tmp_path))

    fresh = _configured(sampler)
    fresh.restore_from_dir(str(tmp_path))

    assert _history(fresh) == _history(searcher)
    _run_trials(fresh, range(6, 10))
    assert len(_study(fresh).trials) >= 10


def test_a_rebuilt_sampler_is_deterministic() -> None:
    def suggestion_after_a_round_trip() -> dict[str, Any] | None:
        searcher = _searcher()
        _run_trials(searcher, range(2))
        restored = _cloudpickle_round_trip(searcher)
        return restored.suggest("next")

    assert suggestion_after_a_round_trip() == suggestion_after_a_round_trip()


def test_a_rebuilt_sampler_seed_is_offset_by_the_trials_so_far() -> None:
    """Re-seeding with the original seed would replay the draws of the study's first trials."""

    def draws(sampler: optuna.samplers.BaseSampler) -> list[float]:
        study = optuna.create_study(sampler=sampler)
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(3)]

    rebuilt = draws(SamplerRecipe(name="random", seed=7).build(trials_so_far=3))
    assert rebuilt == draws(SamplerRecipe(name="random", seed=10).build())
    assert rebuilt != draws(SamplerRecipe(name="random", seed=7).build())
    wrapped = SamplerRecipe(name="random", seed=2**32 - 1).build(trials_so_far=1)
    assert draws(wrapped) == draws(SamplerRecipe(name="random", seed=0).build())


def test_a_sampler_object_is_refused_with_the_reason() -> None:
    with pytest.raises(TypeError, match=r"sampler: must be a SamplerRecipe .* got RandomSampler"):
        DistinctOptunaSearch(
            space=_space, metric="map", mode="max", sampler=optuna.samplers.RandomSampler()
        )


def test_a_recipe_names_a_known_sampler() -> None:
    with pytest.raises(
        ValueError, match="sampler: must be one of gp, nsga2, tpe, random, got 'cmaes'"
    ):
        SamplerRecipe(name="cmaes")
