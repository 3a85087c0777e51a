"""apc's searcher: Ray's OptunaSearch, made picklable whatever the sampler, NaN-safe, distinct.

The stack, outermost first (Tune adds a ``ConcurrencyLimiter`` above it when
``max_concurrent_trials`` is set)::

    DistinctOptunaSearch (a NanSafeSearcher)   the NaN policy
      DistinctSearcher                         a configuration runs once
        RebuildingOptunaSearch                 Ray's OptunaSearch, picklable

:class:`NanSafeSearcher` and :class:`DistinctSearcher` are wrappers over Ray Tune's public
``Searcher`` interface, the way Ray's own ``ConcurrencyLimiter`` and ``Repeater`` are: they
hold the searcher they wrap in ``self.searcher``, talk to it only through ``suggest``,
``on_trial_result``, ``on_trial_complete`` and ``set_search_properties``, keep their own state
in ``get_state``/``set_state`` (what Tune's ``SearchGenerator`` saves for every wrapper in an
experiment snapshot) and leave the wrapped searcher's to its own ``save``/``restore``.

Only :class:`RebuildingOptunaSearch` touches Ray's internals (:data:`OPTUNA_SEARCH_INTERNALS`,
tested with the Ray versions :data:`RAY_TESTED`), to fix its pickling: Ray Tune pickles the
searcher when the Tuner starts, in every experiment snapshot (``save``) and on
``Tuner.restore``. Ray's own ``save`` pickles ``__dict__``, sampler included, and Optuna 5.1's
``NSGAIISampler`` holds a ``threading.Lock``. :class:`RebuildingOptunaSearch` therefore keeps a
:class:`~study.samplers.SamplerRecipe`, leaves the sampler out of whatever it pickles and
rebuilds it on the way back; the study's trials (the sampler's history) pickle with the
in-memory Optuna storage.

NaN: a NaN or missing objective reaches Optuna as its worst value.

Ray 2.60's ``OptunaSearch.on_trial_complete`` reads each objective from the trial's final
result and calls ``optuna.Study.tell``; a NaN (or None) makes ``tell`` raise, Ray logs the
error as a warning and the Optuna trial stays RUNNING, so the sampler never learns from it.
The same happens to a result that holds no objective at all (a trial stopped before its first
report ends with Tune's auto-filled result): Ray tells ``[None, None, ...]`` as COMPLETE.
:class:`NanSafeSearcher` only rewrites such results (policy: :mod:`study.objectives`) before
handing them on; Ray's code stays in charge of everything else (FAIL on errors, PRUNED when
nothing was measured, the bookkeeping of finished trials).

A trial a scheduler (ASHA) stopped before its last epoch is told PRUNED, not COMPLETE with
its early values: those measure an under-trained student, and in NSGA-II's population they
would stand for the configuration as if trained to the end.

The NaN policy sits above the distinct one so that :class:`DistinctSearcher` sees what the
sampler is told (worst values, PRUNED), not what the trial reported.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import numbers
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study.objectives import sampler_substitutes
from study.samplers import SamplerRecipe
from trainables.metric_names import Direction

if TYPE_CHECKING:
    import optuna

__all__ = [
    "OPTUNA_SEARCH_INTERNALS",
    "RAY_TESTED",
    "DistinctOptunaSearch",
    "DistinctSearcher",
    "NanSafeOptunaSearch",
    "NanSafeSearcher",
    "RebuildingOptunaSearch",
    "SearcherWrapper",
    "optuna_study",
]

logger = logging.getLogger(__name__)

#: The Ray versions (a ``packaging`` specifier) :class:`RebuildingOptunaSearch` is tested with:
#: it relies on private attributes of Ray's ``OptunaSearch``. pyproject allows ``>=2.40,<3``;
#: moving the lock outside this range means checking the adapter against the new Ray's
#: ``ray/tune/search/optuna/optuna_search.py`` and widening this (tests/study/test_search.py).
RAY_TESTED = ">=2.60,<2.61"

#: The private attributes of Ray's ``OptunaSearch`` that :class:`RebuildingOptunaSearch` reads
#: and writes: the sampler object, the Optuna study, and the Optuna trial of each Tune trial.
OPTUNA_SEARCH_INTERNALS = ("_sampler", "_ot_study", "_ot_trials")


# --- the adapter: the only class that touches Ray's internals ---------------------------------


class RebuildingOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose pickles hold the sampler's recipe, never the sampler.

    Args:
        sampler: the recipe of the Optuna sampler; every other argument is Ray's.

    Raises:
        RuntimeError: the installed Ray's ``OptunaSearch`` lacks one of
            :data:`OPTUNA_SEARCH_INTERNALS`.
    """

    def __init__(self, *, sampler: SamplerRecipe, **kwargs: Any) -> None:
        if not isinstance(sampler, SamplerRecipe):
            raise TypeError(
                f"sampler: must be a SamplerRecipe (sampler objects may not pickle), "
                f"got {type(sampler).__name__}"
            )
        self.sampler_recipe = sampler
        super().__init__(sampler=sampler.build(), **kwargs)
        missing = [name for name in OPTUNA_SEARCH_INTERNALS if not hasattr(self, name)]
        if missing:
            import ray

            raise RuntimeError(
                f"ray {ray.__version__}: OptunaSearch has no {', '.join(missing)}; "
                f"study.search.RebuildingOptunaSearch is tested with ray{RAY_TESTED}"
            )

    @property
    def study(self) -> optuna.Study | None:
        """The Optuna study (None until metric, mode and space are known)."""
        return cast("optuna.Study | None", self._ot_study)

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


# --- wrappers over Ray Tune's public Searcher interface ---------------------------------------


class SearcherWrapper(Searcher):
    """A ``Searcher`` that forwards everything to the searcher it wraps (``self.searcher``).

    Tune's ``SearchGenerator`` walks the ``searcher`` attributes down to the base searcher: it
    saves each wrapper's :meth:`get_state` and the base searcher's own ``save``. A wrapper's
    state is its ``__dict__`` without the wrapped searcher. :meth:`save` and :meth:`restore`
    (a wrapper saved on its own, e.g. ``save_to_dir``) keep both in one file.
    """

    def __init__(self, searcher: Searcher) -> None:
        if not isinstance(searcher, Searcher):
            raise TypeError(
                f"searcher: must be a ray.tune.search.Searcher, got {type(searcher).__name__}"
            )
        self.searcher = searcher
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # The wrapped searcher's, always: set_search_properties may set them after __init__.
    @property
    def metric(self) -> Any:
        return self.searcher.metric

    @property
    def mode(self) -> Any:
        return self.searcher.mode

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return bool(self.searcher.set_search_properties(metric, mode, config, **spec))

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return bool(self.searcher.set_max_concurrency(max_concurrent))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return cast("dict[str, Any] | None", self.searcher.suggest(trial_id))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def add_evaluated_point(
        self,
        parameters: dict[str, Any],
        value: float,
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        self.searcher.add_evaluated_point(parameters, value, error, pruned, intermediate_values)

    def get_state(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            inner = Path(tmp) / "searcher.pkl"
            self.searcher.save(str(inner))
            saved = {"state": self.get_state(), "searcher": inner.read_bytes()}
        with open(checkpoint_path, "wb") as file:
            pickle.dump(saved, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            saved = pickle.load(file)
        with tempfile.TemporaryDirectory() as tmp:
            inner = Path(tmp) / "searcher.pkl"
            inner.write_bytes(saved["searcher"])
            self.searcher.restore(str(inner))
        self.set_state(saved["state"])


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


class NanSafeSearcher(SearcherWrapper):
    """Tells the wrapped searcher ``-inf``/``+inf`` for an objective a trial lacks.

    Args:
        searcher: the searcher told the rewritten results.
        iterations: reports (epochs) of a trial that runs to the end; a trial completed
            with fewer was stopped early and is told PRUNED (no result). None: never.
    """

    def __init__(self, searcher: Searcher, *, iterations: int | None = None) -> None:
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations: must be a positive integer or None, got {iterations}")
        super().__init__(searcher)
        self.iterations = iterations

    def _objectives(self) -> dict[str, Direction]:
        metrics, modes = _as_list(self.metric), _as_list(self.mode)
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


class DistinctSearcher(SearcherWrapper):
    """Does not spend a trial on a configuration it has run.

    Why: on small discrete spaces (``matching: none`` has only ``student_width`` left) NSGA-II's
    crossover and mutation often hand back a parent exactly; the demo lost two or three of its
    twelve trials to repeats. A repeat of a finished trial is told the earlier trial's values
    at once (the sampler learns nothing new, which is the truth, and moves on), a repeat of a
    trial still running is told FAIL, and the wrapped searcher is asked again, up to
    ``max_retries`` times; after that the repeat runs (the space may be exhausted).

    Each ask is a trial of its own to the wrapped searcher: Tune's trial id for the first,
    ``<id>#<n>`` for the n-th ask again. A finished trial counts when the wrapped searcher was
    told values for every objective (not PRUNED, not FAIL, no NaN): what Ray's ``OptunaSearch``
    tells Optuna as COMPLETE. Put it below :class:`NanSafeSearcher`, which turns what a trial
    reported into what the sampler is told.
    """

    def __init__(self, searcher: Searcher, *, max_retries: int = 20) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries: must be an integer >= 0, got {max_retries}")
        super().__init__(searcher)
        self.max_retries = max_retries
        self._finished_values: dict[str, list[float]] = {}  # configuration key -> values told
        self._running: dict[str, str] = {}  # configuration key -> trial id
        self._suggested: dict[str, tuple[str, str]] = {}  # trial id -> (inner trial id, key)

    @property
    def finished_values(self) -> dict[str, list[float]]:
        """The values told for each finished configuration (its key: sorted JSON)."""
        return self._finished_values

    @staticmethod
    def _key(config: dict[str, Any]) -> str:
        return json.dumps(config, sort_keys=True, default=str)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        inner_id = trial_id
        config = self.searcher.suggest(inner_id)
        for retry in range(1, self.max_retries + 1):
            if not isinstance(config, dict):
                return cast("dict[str, Any] | None", config)
            key = self._key(config)
            earlier = self._finished_values.get(key)
            if earlier is None and key not in self._running:
                break
            if earlier is not None:
                told = dict(zip(_as_list(self.metric), earlier, strict=True))
                self.searcher.on_trial_complete(inner_id, result=told)
            else:
                self.searcher.on_trial_complete(inner_id, result=None, error=True)
            logger.info("trial %s: skipped a repeat of %s", trial_id, key)
            inner_id = f"{trial_id}#{retry}"
            config = self.searcher.suggest(inner_id)
        if isinstance(config, dict):
            key = self._key(config)
            self._running[key] = trial_id
            self._suggested[trial_id] = (inner_id, key)
        return cast("dict[str, Any] | None", config)

    def _inner_id(self, trial_id: str) -> str:
        return self._suggested[trial_id][0] if trial_id in self._suggested else trial_id

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(self._inner_id(trial_id), result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.searcher.on_trial_complete(self._inner_id(trial_id), result=result, error=error)
        if trial_id not in self._suggested:
            return
        _, key = self._suggested.pop(trial_id)
        if self._running.get(key) == trial_id:
            del self._running[key]
        values = [None if not result else result.get(m) for m in _as_list(self.metric)]
        if all(isinstance(v, numbers.Real) and not math.isnan(v) for v in values):
            self._finished_values[key] = [float(cast(float, v)) for v in values]


# --- apc's stacks ----------------------------------------------------------------------------


class NanSafeOptunaSearch(NanSafeSearcher):
    """``NanSafeSearcher(RebuildingOptunaSearch(...))``.

    Args:
        iterations: see :class:`NanSafeSearcher`; every other argument is
            :class:`RebuildingOptunaSearch`'s.
    """

    def __init__(self, *, iterations: int | None = None, **kwargs: Any) -> None:
        super().__init__(RebuildingOptunaSearch(**kwargs), iterations=iterations)


class DistinctOptunaSearch(NanSafeSearcher):
    """apc's searcher: ``NanSafeSearcher(DistinctSearcher(RebuildingOptunaSearch(...)))``.

    Args:
        iterations: see :class:`NanSafeSearcher`.
        max_retries: see :class:`DistinctSearcher`; every other argument is
            :class:`RebuildingOptunaSearch`'s.
    """

    def __init__(
        self, *, iterations: int | None = None, max_retries: int = 20, **kwargs: Any
    ) -> None:
        distinct = DistinctSearcher(RebuildingOptunaSearch(**kwargs), max_retries=max_retries)
        super().__init__(distinct, iterations=iterations)

    @property
    def _finished_values(self) -> dict[str, list[float]]:
        """The distinct layer's record (see :attr:`DistinctSearcher.finished_values`)."""
        distinct = self.searcher
        assert isinstance(distinct, DistinctSearcher)
        return distinct.finished_values


def optuna_study(searcher: object) -> optuna.Study:
    """The Optuna study at the bottom of a stack of wrappers (``searcher`` attributes), Tune's
    ``SearchGenerator`` and ``ConcurrencyLimiter`` included.

    Raises:
        TypeError: the stack has no :class:`RebuildingOptunaSearch` at the bottom.
        RuntimeError: its study is not set up yet (no search space given).
    """
    base = searcher
    while (inner := getattr(base, "searcher", None)) is not None:  # as Tune's SearchGenerator
        base = inner
    if not isinstance(base, RebuildingOptunaSearch):
        raise TypeError(f"searcher: no RebuildingOptunaSearch at the bottom, got {type(base)}")
    study = base.study
    if study is None:
        raise RuntimeError("the Optuna study is not set up yet (no search space given)")
    return study
