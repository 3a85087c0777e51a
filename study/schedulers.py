"""Early stopping on every objective: a Pareto-aware asynchronous successive halving.

:class:`MultiObjectiveASHA` is MOASHA (Schmucker et al. 2021, "Multi-objective asynchronous
successive halving"): Ray's ASHA with its one-metric cutoff replaced by a ranking of objective
vectors. A spec asks for it with ``scheduler: {name: mo_asha, grace_period, reduction_factor}``;
it ranks by the study's ``objectives`` ({metric: "min" | "max"}), so it takes no ``metric`` or
``mode`` of its own.

Rungs sit at ``grace_period * reduction_factor**k`` epochs (``training_iteration``), below
``max_t`` (the study's epochs: at ``max_t`` every trial stops anyway, so a rung there would
decide nothing). Asynchronous like ASHA: when a trial's report reaches a rung it has not been
recorded at, its objective vector is recorded there and the trial goes on iff it ranks within
the top ``ceil(n / reduction_factor)`` of the ``n`` vectors recorded at that rung so far (itself
included), else it is stopped. Only the highest rung a report reaches is recorded (Ray's ASHA
would back-fill lower rungs it skipped with later values; with one report per epoch no rung is
skipped).

The ranking (:func:`rank_at_rung`), best first:

1. vectors with every objective finite, by non-dominated front (front 0 first);
2. within a front, by crowding distance (NSGA-II, computed within the front), larger first:
   spread-out trade-offs survive over crowded ones, the front's extremes (infinite distance)
   first;
3. then by arrival at the rung (earlier first), which also orders equal vectors;
4. last, every vector holding a NaN, an infinity or a missing objective (no trade-off is known
   for it, so it is worse than any finite vector), by arrival.

A trial that fails keeps its records at the rungs it reached: they were measured, and the
trials after it are compared with what the rung has seen, as in ASHA (whose records are never
removed either). The decisions are pure functions (:func:`rank_at_rung`, :func:`promotes`,
:func:`rung_milestones`); the scheduler's state is plain data (floats in dicts keyed by trial
id, :meth:`MultiObjectiveASHA.get_state`).

Resuming: Ray Tune 2.60 does not snapshot a scheduler. ``TuneController.save_to_dir`` leaves
``_scheduler_alg`` out of its state and never calls ``TrialScheduler.save``; ``Tuner.restore``
brings back the scheduler pickled in ``tuner.pkl`` when the Tuner was built, i.e. with empty
rungs, and every trial after a resume would be judged against nobody (always promoted).
Tune does snapshot its callbacks (``get_state``, in ``callback-states-*.pkl`` beside the
searcher's state, restored before the trials are requeued), so :class:`SchedulerSnapshot`, a
callback holding the scheduler, carries the rungs through that file: ``tuner.pkl`` pickles the
TuneConfig and the RunConfig together, so the restored callback and the restored scheduler are
one object again.

What a stop means downstream does not depend on this class: :class:`study.search.NanSafeSearcher`
tells Optuna PRUNED and :func:`study.tracking.make_callback` ends the MLflow run KILLED with
``apc.stopped_early`` for any trial that ends with fewer reports than the study's epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from ray.tune import Callback
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = [
    "TIME_ATTR",
    "Direction",
    "MultiObjectiveASHA",
    "SchedulerSnapshot",
    "promotes",
    "rank_at_rung",
    "rung_milestones",
]

Direction = Literal["min", "max"]

#: What rungs are measured in: the epochs a trial has reported (auto-filled by Tune).
TIME_ATTR: Final = "training_iteration"

#: An objective vector as recorded: one float per objective, NaN where missing.
Vector = tuple[float, ...]


def rung_milestones(*, grace_period: int, reduction_factor: float, max_t: int) -> tuple[float, ...]:
    """The rungs, ascending: ``grace_period * reduction_factor**k`` below ``max_t``."""
    if grace_period < 1:
        raise ValueError(f"grace_period: must be a positive integer, got {grace_period!r}")
    if not reduction_factor > 1:
        raise ValueError(f"reduction_factor: must be greater than 1, got {reduction_factor!r}")
    if max_t < grace_period:
        raise ValueError(f"max_t: must be at least grace_period ({grace_period}), got {max_t!r}")
    milestones = []
    k = 0
    while (milestone := grace_period * reduction_factor**k) < max_t:
        milestones.append(milestone)
        k += 1
    return tuple(milestones)


def _check_directions(directions: Sequence[str]) -> None:
    if not directions:
        raise ValueError("directions: must name at least one objective, got []")
    for direction in directions:
        if direction not in ("min", "max"):
            raise ValueError(f"directions: must each be 'min' or 'max', got {direction!r}")


def _valid(vector: Sequence[float]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in vector)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` at least as good everywhere and better somewhere (both minimized)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _fronts(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Non-dominated sorting (Deb et al.'s fast version) of minimized points: index lists."""
    dominated_by: list[list[int]] = [[] for _ in points]
    count = [0] * len(points)
    for i, p in enumerate(points):
        for j, q in enumerate(points):
            if _dominates(p, q):
                dominated_by[i].append(j)
            elif _dominates(q, p):
                count[i] += 1
    fronts: list[list[int]] = []
    current = [i for i, c in enumerate(count) if c == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def _crowding(points: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each member of ``front``; ties in an objective are sorted
    by index, so which of two equal extremes gets the infinite distance is the earlier one."""
    distance = dict.fromkeys(front, 0.0)
    for m in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: (points[i][m], i))
        low, high = points[ordered[0]][m], points[ordered[-1]][m]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue  # no spread in this objective: it separates nobody
        for before, i, after in zip(ordered, ordered[1:], ordered[2:], strict=False):
            distance[i] += (points[after][m] - points[before][m]) / (high - low)
    return distance


def rank_at_rung(vectors: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of ``vectors`` (given in arrival order), best first; see the module's rule."""
    _check_directions(directions)
    for vector in vectors:
        if len(vector) != len(directions):
            raise ValueError(
                f"vectors: must each hold one value per objective ({len(directions)}), "
                f"got {list(vector)!r}"
            )
    valid = [i for i, v in enumerate(vectors) if _valid(v)]
    invalid = [i for i, v in enumerate(vectors) if not _valid(v)]
    # Minimize everything: a "max" objective is negated.
    points = [
        tuple(
            -float(x) if d == "max" else float(x)
            for x, d in zip(vectors[i], directions, strict=True)
        )
        for i in valid
    ]
    order: list[int] = []
    for front in _fronts(points):
        distance = _crowding(points, front)
        order.extend(valid[i] for i in sorted(front, key=lambda i: (-distance[i], i)))
    return order + invalid


def promotes(
    *,
    vectors: Sequence[Sequence[float]],
    directions: Sequence[str],
    index: int,
    reduction_factor: float,
) -> bool:
    """Whether ``vectors[index]`` ranks within the top ``ceil(n / reduction_factor)`` of the
    ``n`` vectors recorded at a rung (itself included): ASHA's top ``1 / eta``, at least one."""
    if not 0 <= index < len(vectors):
        raise ValueError(f"index: must be in [0, {len(vectors)}), got {index!r}")
    if not reduction_factor > 1:
        raise ValueError(f"reduction_factor: must be greater than 1, got {reduction_factor!r}")
    keep = math.ceil(len(vectors) / reduction_factor)
    return rank_at_rung(vectors, directions).index(index) < keep


def _value(result: Mapping[str, Any], metric: str) -> float:
    """A reported objective as a float; NaN when missing or not a number (it then ranks last)."""
    value = result.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


class MultiObjectiveASHA(FIFOScheduler):
    """MOASHA for Ray Tune: stops trials whose objective vector ranks outside the top
    ``1 / reduction_factor`` at a rung (see the module's docstring for the rule). A
    :class:`~ray.tune.schedulers.TrialScheduler` through Ray's FIFO one, as Ray's ASHA: trials
    start in submission order.

    Args:
        objectives: ``{metric: "min" | "max"}``, the study's objectives (``spec.objectives``).
        max_t: epochs a trial runs at most; a report at ``max_t`` stops the trial (as ASHA's
            ``stop_last_trials``).
        grace_period: the first rung, in epochs.
        reduction_factor: ``eta``, the rungs' spacing and the share that goes on (1 / eta).
    """

    def __init__(
        self,
        *,
        objectives: Mapping[str, Direction],
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 3.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Ray's is untyped
        if not objectives:
            raise ValueError("objectives: must name at least one metric, got {}")
        _check_directions(list(objectives.values()))
        self._objectives: dict[str, Direction] = dict(objectives)
        self._max_t = max_t
        self._reduction_factor = reduction_factor
        self._milestones = rung_milestones(
            grace_period=grace_period, reduction_factor=reduction_factor, max_t=max_t
        )
        # milestone index -> {trial id: vector}; dicts keep insertion order, i.e. arrival.
        self._rungs: list[dict[str, Vector]] = [{} for _ in self._milestones]
        self._num_stopped = 0

    @property
    def milestones(self) -> tuple[float, ...]:
        return self._milestones

    def recorded(self, rung: int) -> dict[str, Vector]:
        """A copy of what rung ``rung`` (an index into :attr:`milestones`) has recorded."""
        return dict(self._rungs[rung])

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # It ranks by its objectives; a TuneConfig metric/mode would be a second, conflicting
        # answer, which Tune reports as an error when this returns False.
        return metric is None and mode is None

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        pass  # nothing to set up: rungs are keyed by trial id when a trial reaches them

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        pass  # its records stay at the rungs it reached (see the module's docstring)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        pass

    def _vector(self, result: Mapping[str, Any]) -> Vector:
        return tuple(_value(result, metric) for metric in self._objectives)

    def _rung_of(self, iteration: float) -> int | None:
        """The highest rung ``iteration`` reaches, None below the first."""
        reached = [k for k, milestone in enumerate(self._milestones) if iteration >= milestone]
        return reached[-1] if reached else None

    def _record(self, trial_id: str, result: Mapping[str, Any]) -> bool | None:
        """Record the result at the highest rung it reaches if the trial is new there, and
        say whether it goes on; None when no rung decides (below the first, or seen)."""
        iteration = result.get(TIME_ATTR)
        if not isinstance(iteration, int | float):
            return None
        k = self._rung_of(iteration)
        if k is None or trial_id in self._rungs[k]:
            return None
        rung = self._rungs[k]
        rung[trial_id] = self._vector(result)
        return promotes(
            vectors=list(rung.values()),
            directions=list(self._objectives.values()),
            index=len(rung) - 1,
            reduction_factor=self._reduction_factor,
        )

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        iteration = result.get(TIME_ATTR)
        if isinstance(iteration, int | float) and iteration >= self._max_t:
            return TrialScheduler.STOP
        if self._record(trial.trial_id, result) is False:
            self._num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        # As ASHA: a trial that ends by itself at a rung still counts for the trials after it.
        if result:
            self._record(trial.trial_id, result)

    def debug_string(self) -> str:
        rungs = " | ".join(
            f"epoch {milestone:g}: {len(rung)} recorded"
            for milestone, rung in zip(self._milestones, self._rungs, strict=True)
        )
        return f"Using MultiObjectiveASHA: num_stopped={self._num_stopped}\n{rungs}"

    def get_state(self) -> dict[str, Any]:
        """The decisions' state as plain data, with the settings it is valid for."""
        return {
            "objectives": dict(self._objectives),
            "milestones": self._milestones,
            "rungs": [dict(rung) for rung in self._rungs],
            "num_stopped": self._num_stopped,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`get_state`'s ``state``.

        Raises:
            ValueError: ``state`` was saved by a scheduler with other objectives or rungs
                (its records would be compared with vectors of another meaning).
        """
        for key, mine in (("objectives", self._objectives), ("milestones", self._milestones)):
            theirs = state.get(key)
            if theirs != mine:
                raise ValueError(
                    f"{key}: the saved scheduler state is for {theirs!r}, this scheduler has "
                    f"{mine!r}"
                )
        self._rungs = [dict(rung) for rung in state["rungs"]]
        self._num_stopped = int(state["num_stopped"])

    # TrialScheduler's checkpoint API (Ray 2.60's TuneController never calls it; see
    # SchedulerSnapshot for what a resumed study uses).
    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.get_state(), file)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as file:
            self.set_state(pickle.load(file))


class SchedulerSnapshot(Callback):
    """Carries a :class:`MultiObjectiveASHA`'s state through Tune's experiment snapshots.

    Put it in ``RunConfig.callbacks`` of the Tuner whose ``TuneConfig.scheduler`` is
    ``scheduler`` (see the module's docstring for why a callback does it).
    """

    def __init__(self, scheduler: MultiObjectiveASHA) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        return {"mo_asha": self.scheduler.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_state(state["mo_asha"])
