"""Ray's OptunaSearch, made picklable whatever the sampler, and NaN-safe.

Pickling: Ray Tune pickles the searcher when the Tuner starts, in every experiment snapshot
(``save``) and on ``Tuner.restore``. Ray's own ``save`` pickles ``__dict__``, sampler included,
and Optuna 5.1's ``NSGAIISampler`` holds a ``threading.Lock``. :class:`RebuildingOptunaSearch`
therefore keeps a :class:`~study.samplers.SamplerRecipe`, leaves the sampler out of whatever it
pickles and rebuilds it on the way back; the study's trials (the sampler's history) pickle
with the in-memory Optuna storage.

NaN: a NaN or missing objective reaches Optuna as its worst value.

Ray 2.60's ``OptunaSearch.on_trial_complete`` reads each objective from the trial's final
result and calls ``optuna.Study.tell``; a NaN (or None) makes ``tell`` raise, Ray logs the
error as a warning and the Optuna trial stays RUNNING, so the sampler never learns from it.
The same happens to a result that holds no objective at all (a trial stopped before its first
report ends with Tune's auto-filled result): Ray tells ``[None, None, ...]`` as COMPLETE.
This subclass only rewrites such results (policy: :mod:`study.objectives`) before handing them
to Ray's own code, which stays in charge of everything else (FAIL on errors, PRUNED when
nothing was measured, the bookkeeping of finished trials).

A trial a scheduler (ASHA) stopped before its last epoch is told PRUNED, not COMPLETE with
its early values: those measure an under-trained student, and in NSGA-II's population they
would stand for the configuration as if trained to the end.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
from typing import Any, cast

from ray.tune.search.optuna import OptunaSearch

from study.objectives import sampler_substitutes
from study.samplers import SamplerRecipe
from trainables.metric_names import Direction

__all__ = ["DistinctOptunaSearch", "NanSafeOptunaSearch", "RebuildingOptunaSearch"]

logger = logging.getLogger(__name__)


class RebuildingOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose pickles hold the sampler's recipe, never the sampler.

    Args:
        sampler: the recipe of the Optuna sampler; every other argument is Ray's.
    """

    def __init__(self, *, sampler: SamplerRecipe, **kwargs: Any) -> None:
        if not isinstance(sampler, SamplerRecipe):
            raise TypeError(
                f"sampler: must be a SamplerRecipe (sampler objects may not pickle), "
                f"got {type(sampler).__name__}"
            )
        self.sampler_recipe = sampler
        super().__init__(sampler=sampler.build(), **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sampler"] = None
        study = state.get("_ot_study")
        if study is not None:
            # Shallow copies: the live study keeps its sampler, the pickle shares its storage.
            study = copy.copy(study)
            study.sampler = None
            state["_ot_study"] = study
            # Ray keeps every optuna.Trial it asked for, and each refers to the study.
            trials = {}
            for trial_id, trial in self._ot_trials.items():
                trials[trial_id] = copy.copy(trial)
                trials[trial_id].study = study
            state["_ot_trials"] = trials
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        study = self._ot_study
        sampler = self.sampler_recipe.build(
            trials_so_far=0 if study is None else len(study.get_trials(deepcopy=False))
        )
        self._sampler = sampler
        if study is not None:
            study.sampler = sampler

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment snapshot; Ray's own pickles ``__dict__`` with the sampler."""
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))


class NanSafeOptunaSearch(RebuildingOptunaSearch):
    """``OptunaSearch`` that tells Optuna ``-inf``/``+inf`` for an objective a trial lacks.

    Args:
        iterations: reports (epochs) of a trial that runs to the end; a trial completed
            with fewer was stopped early and is told PRUNED. None: never.
    """

    def __init__(self, *, iterations: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations: must be a positive integer or None, got {iterations}")
        self.iterations = iterations

    def _objectives(self) -> dict[str, Direction]:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        return {str(m): cast(Direction, d) for m, d in zip(metrics, modes, strict=True)}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        objectives = self._objectives()
        if result is not None and all(result.get(name) is None for name in objectives):
            # Nothing measured (e.g. stopped before its first report, whose last result is
            # Tune's auto-filled one): Ray would tell [None, ...] as COMPLETE, which Optuna
            # refuses. Without a result Ray tells PRUNED, or FAIL after an error.
            result = None
        if (
            result is not None
            and self.iterations is not None
            and int(result.get("training_iteration", self.iterations)) < self.iterations
        ):
            logger.info("trial %s: stopped early, told PRUNED", trial_id)
            result = None
        substitutes = {} if error else sampler_substitutes(result, objectives)
        if substitutes and result is not None:
            told = ", ".join(
                f"{name}={sub.value} ({sub.reason})" for name, sub in substitutes.items()
            )
            logger.info("trial %s: objectives without a usable value, told: %s", trial_id, told)
            result = {**result, **{name: sub.value for name, sub in substitutes.items()}}
        super().on_trial_complete(trial_id, result=result, error=error)


class DistinctOptunaSearch(NanSafeOptunaSearch):
    """``NanSafeOptunaSearch`` that does not spend a trial on a configuration it has run.

    Why: on small discrete spaces (``matching: none`` has only ``student_width`` left) NSGA-II's
    crossover and mutation often hand back a parent exactly; the demo lost two or three of its
    twelve trials to repeats. A repeat of a finished trial is told the earlier trial's values
    at once (the sampler learns nothing new, which is the truth, and moves on), a repeat of a
    trial still running is told FAIL, and Optuna is asked again, up to ``max_retries`` times;
    after that the repeat runs (the space may be exhausted).
    """

    def __init__(self, *, max_retries: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_retries < 0:
            raise ValueError(f"max_retries: must be an integer >= 0, got {max_retries}")
        self.max_retries = max_retries
        self._finished_values: dict[str, list[float]] = {}
        self._running: dict[str, str] = {}  # configuration key -> trial id

    @property
    def _study(self) -> Any:
        """Ray's Optuna study (set up once metric, mode and space are known)."""
        if self._ot_study is None:
            raise RuntimeError("the Optuna study is not set up yet (no search space given)")
        return self._ot_study

    @staticmethod
    def _key(params: dict[str, Any]) -> str:
        return json.dumps(params, sort_keys=True, default=str)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        from optuna.trial import TrialState

        config = super().suggest(trial_id)
        for _ in range(self.max_retries):
            if not isinstance(config, dict):
                return config
            key = self._key(self._ot_trials[trial_id].params)
            earlier = self._finished_values.get(key)
            if earlier is None and key not in self._running:
                break
            repeat = self._ot_trials.pop(trial_id)
            if earlier is not None:
                self._study.tell(repeat, earlier)
            else:
                self._study.tell(repeat, state=TrialState.FAIL)
            logger.info("trial %s: skipped a repeat of %s", trial_id, key)
            config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._running[self._key(self._ot_trials[trial_id].params)] = trial_id
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        from optuna.trial import TrialState

        ot_trial = self._ot_trials.get(trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)
        if ot_trial is None:
            return
        key = self._key(ot_trial.params)
        if self._running.get(key) == trial_id:
            del self._running[key]
        frozen = self._study.trials[ot_trial.number]
        if frozen.state == TrialState.COMPLETE and frozen.values is not None:
            self._finished_values[key] = list(frozen.values)
