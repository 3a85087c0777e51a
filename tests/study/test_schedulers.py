"""MultiObjectiveASHA: rung decisions against a brute-force reference, Ray-free."""

from __future__ import annotations

import math
import pickle
import random
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.schedulers import TrialScheduler

from study.schedulers import Direction, MultiObjectiveASHA, promotes, rank_at_rung, rung_milestones
from study.spec import SpecError, parse_spec

# --- brute-force reference --------------------------------------------------------------------


def _ref_order(vectors: list[list[float]], directions: list[str]) -> list[int]:
    """The documented rule, written the slow, obvious way."""
    ok = [i for i, v in enumerate(vectors) if all(math.isfinite(x) for x in v)]
    bad = [i for i, v in enumerate(vectors) if i not in ok]
    pts = {
        i: [-x if d == "max" else x for x, d in zip(vectors[i], directions, strict=True)]
        for i in ok
    }

    def dom(a: int, b: int) -> bool:
        pa, pb = pts[a], pts[b]
        return all(x <= y for x, y in zip(pa, pb, strict=True)) and pa != pb

    # Front of a point: the longest chain of points dominating it.
    front: dict[int, int] = {}
    for i in sorted(ok, key=lambda i: sum(1 for j in ok if dom(j, i))):
        front[i] = max((front[j] + 1 for j in ok if dom(j, i)), default=0)
    assert all(front[i] == max((front[j] + 1 for j in ok if dom(j, i)), default=0) for i in ok)
    crowd: dict[int, float] = {}
    for i in ok:
        members = [j for j in ok if front[j] == front[i]]
        total = 0.0
        for m in range(len(directions)):
            ordered = sorted(members, key=lambda j: (pts[j][m], j))
            pos = ordered.index(i)
            lo, hi = pts[ordered[0]][m], pts[ordered[-1]][m]
            if pos in (0, len(ordered) - 1):
                total = math.inf
            elif hi > lo:
                total += (pts[ordered[pos + 1]][m] - pts[ordered[pos - 1]][m]) / (hi - lo)
        crowd[i] = total
    return sorted(ok, key=lambda i: (front[i], -crowd[i], i)) + bad


def _ref_promotes(vectors: list[list[float]], directions: list[str], eta: float) -> bool:
    return _ref_order(vectors, directions).index(len(vectors) - 1) < math.ceil(len(vectors) / eta)


# Small integers make ties and duplicates common; NaN and inf stand for broken reports.
_value = st.one_of(
    st.integers(0, 4).map(float), st.sampled_from([math.nan, math.inf]), st.floats(-10, 10)
)


@settings(max_examples=300, deadline=None)
@given(
    directions=st.lists(st.sampled_from(["min", "max"]), min_size=1, max_size=3),
    data=st.data(),
)
def test_rank_at_rung_matches_the_reference(directions: list[str], data: Any) -> None:
    vectors = data.draw(
        st.lists(st.lists(_value, min_size=len(directions), max_size=len(directions)), max_size=9)
    )
    assert rank_at_rung(vectors, directions) == _ref_order(vectors, directions)
    eta = data.draw(st.sampled_from([1.5, 2, 3, 4]))
    if vectors:
        assert promotes(
            vectors=vectors, directions=directions, index=len(vectors) - 1, reduction_factor=eta
        ) == _ref_promotes(vectors, directions, eta)


def test_ranking_rules_by_hand() -> None:
    d = ["max", "min"]
    # 0 and 1 trade off (front 0), 2 is dominated by 0, 3 holds a NaN, 4 duplicates 0.
    vectors = [[0.9, 5.0], [0.5, 1.0], [0.8, 6.0], [math.nan, 0.0], [0.9, 5.0]]
    # Front 0 is {0, 1, 4}: extremes 0 (first of the two equal ones on each axis) and 1 are
    # infinite, 4 is an inner point; then 2, NaN last.
    assert rank_at_rung(vectors, d) == [0, 1, 4, 2, 3]
    assert rank_at_rung([[math.nan, 1.0], [0.0, math.nan]], d) == [0, 1]  # arrival order
    # Alone at a rung a trial goes on; against a dominating one with eta 2, it stops.
    assert promotes(vectors=[[0.1, 9.0]], directions=d, index=0, reduction_factor=3)
    assert not promotes(vectors=[[0.9, 1.0], [0.1, 9.0]], directions=d, index=1, reduction_factor=2)
    # NaN loses even to a dominated-everywhere finite vector.
    assert not promotes(
        vectors=[[0.0, 99.0], [math.nan, 0.0]], directions=d, index=1, reduction_factor=2
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: rank_at_rung([[1.0]], ["up"]),
            "directions: must each be 'min' or 'max', got 'up'",
        ),
        (
            lambda: rank_at_rung([[1.0, 2.0]], ["min"]),
            "vectors: must each hold one value per objective (1), got [1.0, 2.0]",
        ),
        (
            lambda: rung_milestones(grace_period=1, reduction_factor=1, max_t=3),
            "reduction_factor: must be greater than 1, got 1",
        ),
        (
            lambda: rung_milestones(grace_period=4, reduction_factor=2, max_t=3),
            "max_t: must be at least grace_period (4), got 3",
        ),
        (
            lambda: MultiObjectiveASHA(objectives={}, max_t=3),
            "objectives: must name at least one metric, got {}",
        ),
    ],
)
def test_bad_arguments_name_the_rule_and_value(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        call()
    assert str(error.value) == message


def test_rungs() -> None:
    assert rung_milestones(grace_period=1, reduction_factor=2, max_t=10) == (1, 2, 4, 8)
    assert rung_milestones(grace_period=1, reduction_factor=2, max_t=8) == (1, 2, 4)
    assert rung_milestones(grace_period=2, reduction_factor=3, max_t=2) == ()
    assert rung_milestones(grace_period=1, reduction_factor=1.5, max_t=3) == (1, 1.5, 2.25)


# --- the scheduler on synthetic result streams ------------------------------------------------

OBJECTIVES: dict[str, Direction] = {"map": "max", "attr_auc": "max", "params": "min"}


def _trial(trial_id: str) -> Any:
    # What the scheduler reads of a Trial: its id (rungs are keyed by it).
    return SimpleNamespace(trial_id=trial_id)


def _stream(seed: int, *, trials: int, epochs: int) -> list[tuple[str, dict[str, Any]]]:
    """Interleaved reports of ``trials`` trials (random start and pace), one per epoch, with
    ties (coarse values), NaN and missing objectives; trial t3 fails after its epoch 2."""
    rng = random.Random(seed)
    pending = {f"t{i}": 1 for i in range(trials)}
    fail_after = {"t3": 2}
    events: list[tuple[str, dict[str, Any]]] = []
    while pending:
        tid = rng.choice(sorted(pending))
        epoch = pending[tid]
        result: dict[str, Any] = {
            "training_iteration": epoch,
            "map": rng.choice([0.1, 0.2, 0.3, rng.random()]),
            "attr_auc": rng.choice([0.5, rng.random(), math.nan]) if rng.random() < 0.9 else None,
            "params": float(rng.randint(1, 4)),
        }
        if rng.random() < 0.05:
            del result["params"]
        events.append((tid, result))
        if epoch == fail_after.get(tid):
            events.append((tid, {"error": True}))
            del pending[tid]
        elif epoch == epochs:
            del pending[tid]
        else:
            pending[tid] = epoch + 1
    return events


class _Reference:
    """The same study decided by the reference ranking: rungs as lists in arrival order."""

    def __init__(self, *, max_t: int, grace: int, eta: float) -> None:
        self.max_t, self.eta = max_t, eta
        self.milestones = rung_milestones(grace_period=grace, reduction_factor=eta, max_t=max_t)
        self.rungs: list[dict[str, list[float]]] = [{} for _ in self.milestones]

    def decide(self, tid: str, result: dict[str, Any], *, complete: bool = False) -> str:
        it = result["training_iteration"]
        if it >= self.max_t and not complete:
            return "STOP"
        reached = [k for k, m in enumerate(self.milestones) if it >= m]
        if not reached or tid in self.rungs[reached[-1]]:
            return "CONTINUE"
        rung = self.rungs[reached[-1]]
        rung[tid] = [v if isinstance(v := result.get(m), float) else math.nan for m in OBJECTIVES]
        keep = _ref_promotes(list(rung.values()), list(OBJECTIVES.values()), self.eta)
        return "CONTINUE" if keep else "STOP"


def _play(
    scheduler: MultiObjectiveASHA,
    events: list[tuple[str, dict[str, Any]]],
    reference: _Reference | None = None,
    stopped: set[str] | None = None,
) -> list[tuple[str, int, str]]:
    """Feed the reports the scheduler lets through (a stopped trial reports no more)."""
    stopped = set() if stopped is None else stopped
    decisions = []
    for tid, result in events:
        if tid in stopped:
            continue
        if "error" in result:
            scheduler.on_trial_error(None, _trial(tid))
            stopped.add(tid)
            continue
        action = scheduler.on_trial_result(None, _trial(tid), dict(result))
        if reference is not None:
            assert action == reference.decide(tid, result), (tid, result)
        decisions.append((tid, result["training_iteration"], action))
        if action == TrialScheduler.STOP:
            # As Tune: the stopped trial completes with its last result, which a rung it
            # has not been recorded at (one reached only at max_t) still records.
            scheduler.on_trial_complete(None, _trial(tid), dict(result))
            if reference is not None:
                reference.decide(tid, result, complete=True)
            stopped.add(tid)
    return decisions


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("grace", "eta", "epochs"), [(1, 2, 8), (1, 3, 9), (2, 1.5, 7)])
def test_on_trial_result_decides_as_the_reference(
    seed: int, grace: int, eta: float, epochs: int
) -> None:
    scheduler = MultiObjectiveASHA(
        objectives=OBJECTIVES, max_t=epochs, grace_period=grace, reduction_factor=eta
    )
    reference = _Reference(max_t=epochs, grace=grace, eta=eta)
    decisions = _play(scheduler, _stream(seed, trials=12, epochs=epochs), reference)
    assert any(action == "STOP" for _, it, action in decisions if it < epochs)
    assert any(action == "CONTINUE" for _, _, action in decisions)
    # The failed trial's records stay at the rungs it reached.
    for k, milestone in enumerate(scheduler.milestones):
        assert ("t3" in scheduler.recorded(k)) == (milestone <= 2 and "t3" in reference.rungs[k])
        assert list(scheduler.recorded(k)) == list(reference.rungs[k])


def test_a_failed_trial_keeps_its_record_and_still_counts() -> None:
    s = MultiObjectiveASHA(objectives={"map": "max"}, max_t=4, grace_period=1, reduction_factor=2)
    assert s.on_trial_result(None, _trial("a"), {"training_iteration": 1, "map": 0.9}) == "CONTINUE"
    s.on_trial_error(None, _trial("a"))
    # b is worse than the failed a at rung 1: with eta 2 only the best of two goes on.
    assert s.on_trial_result(None, _trial("b"), {"training_iteration": 1, "map": 0.5}) == "STOP"
    assert s.on_trial_result(None, _trial("c"), {"training_iteration": 1, "map": 0.95}) == (
        "CONTINUE"
    )
    assert list(s.recorded(0)) == ["a", "b", "c"]
    assert s.on_trial_result(None, _trial("c"), {"training_iteration": 4, "map": 0.1}) == "STOP"
    # A report without the time attribute decides nothing.
    assert s.on_trial_result(None, _trial("d"), {"map": 0.0}) == "CONTINUE"


def test_pickle_round_trip_keeps_decisions(tmp_path: Path) -> None:
    events = _stream(5, trials=12, epochs=8)
    half = len(events) // 2

    def made() -> MultiObjectiveASHA:
        return MultiObjectiveASHA(
            objectives=OBJECTIVES, max_t=8, grace_period=1, reduction_factor=2
        )

    straight, stopped = made(), set[str]()
    _play(straight, events[:half], stopped=stopped)
    thawed = pickle.loads(pickle.dumps(straight))
    restored = made()
    straight.save(str(tmp_path / "sched.pkl"))
    restored.restore(str(tmp_path / "sched.pkl"))
    after = _play(straight, events[half:], stopped=set(stopped))
    assert _play(thawed, events[half:], stopped=set(stopped)) == after
    assert _play(restored, events[half:], stopped=set(stopped)) == after


def test_metric_and_mode_from_tune_config_are_refused() -> None:
    s = MultiObjectiveASHA(objectives=OBJECTIVES, max_t=3)
    assert s.set_search_properties(None, None)
    assert not s.set_search_properties("map", "max")


# --- spec ---------------------------------------------------------------------------------------


def _spec_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as error:
        parse_spec(data)
    return error.value.problems


def test_spec_mo_asha() -> None:
    spec = parse_spec(
        {"name": "s", "scheduler": {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2}}
    )
    assert spec.scheduler is not None
    assert (spec.scheduler.name, spec.scheduler.grace_period) == ("mo_asha", 2)
    assert spec.scheduler.reduction_factor == 2
    # Default and today's keys unchanged.
    asha = parse_spec({"name": "s", "scheduler": {"metric": "map"}}).scheduler
    assert asha is not None
    assert (asha.name, asha.metric, asha.mode) == ("asha", "map", "max")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"name": "s", "scheduler": {"name": "mo_asha", "metric": "map"}},
            [
                "scheduler.metric: must be absent for mo_asha (it ranks by every objective), "
                "got 'map'"
            ],
        ),
        (
            {"name": "s", "scheduler": {"name": "mo_asha", "mode": "min"}},
            ["scheduler.mode: must be absent for mo_asha (it ranks by every objective), got 'min'"],
        ),
        (
            {"name": "s", "scheduler": {"name": "hyperband"}},
            ["scheduler.name: must be one of ['asha', 'mo_asha'], got 'hyperband'"],
        ),
        (
            {
                "name": "s",
                "objectives": {"map": "max", "attr_auc_lrp": "max"},
                "evaluation": {"attribution_methods": ["lrp"]},
                "scheduler": {"name": "mo_asha"},
            },
            [
                "objectives.attr_auc_lrp: must be measured every epoch for scheduler mo_asha; "
                "attr_auc_lrp is measured with a trial's last epoch only, got 'attr_auc_lrp'"
            ],
        ),
    ],
)
def test_spec_mo_asha_problems(data: dict[str, Any], expected: list[str]) -> None:
    assert _spec_problems(data) == expected


def test_runner_builds_mo_asha_for_mo_asha(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    from study import runner

    built: dict[str, Any] = {}

    def tuner(trainable: Any, *, tune_config: Any, **kwargs: Any) -> None:
        built["scheduler"] = tune_config.scheduler

    monkeypatch.setattr(tune, "Tuner", tuner)
    scheduler = {"name": "mo_asha", "grace_period": 1, "reduction_factor": 2}
    spec = parse_spec({"name": "s", "epochs": 4, "scheduler": scheduler})
    runner._tuner(spec, object(), "/tmp/unused", None)
    assert isinstance(built["scheduler"], MultiObjectiveASHA)
    assert built["scheduler"].milestones == (1, 2)
    spec = parse_spec({"name": "s", "epochs": 4, "scheduler": {"metric": "map"}})
    runner._tuner(spec, object(), "/tmp/unused", None)
    assert isinstance(built["scheduler"], tune.schedulers.AsyncHyperBandScheduler)
