"""MultiObjectiveASHA in real studies: `apc run` on local Ray and a SQLite MLflow store, and a
Tune experiment restored after a failure (its rungs come back from Tune's snapshot)."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import pytest

from analysis.layout import STOPPED_TAG
from study.cli import main
from study.schedulers import (
    Direction,
    MultiObjectiveASHA,
    SchedulerSnapshot,
    promotes,
    rung_milestones,
)

pytestmark = pytest.mark.integration

EPOCHS = 4
GRACE, ETA = 1, 2
OBJECTIVES: dict[str, Direction] = {"map": "max", "attr_auc": "max", "params": "min"}


@pytest.fixture(scope="module")
def ran(local_store: tuple[str, Path]) -> dict[str, Any]:
    """`apc run` of a tiny study of 6 trials under mo_asha (rungs at epochs 1 and 2 of 4)."""
    import contextlib
    import io

    uri, root = local_store
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "run",
                "--name",
                "moasha",
                "--trials",
                "6",
                "--tracking-uri",
                uri,
                "--storage",
                str(root / "results"),
                "--set",
                f"epochs={EPOCHS}",
                "--set",
                f"scheduler={{name: mo_asha, grace_period: {GRACE}, reduction_factor: {ETA}}}",
                "--set",
                "objectives={map: max, attr_auc: max, params: min}",
                "--set",
                "dataset.train_size=48",
                "--set",
                "dataset.val_size=16",
                "--set",
                "dataset.image_size=32",
                "--set",
                "teacher.epochs=1",
                "--set",
                "training.batch_size=16",
                "--set",
                "max_concurrent=2",
            ]
        )
    assert code == 0
    return {"uri": uri, "root": root, "stdout": out.getvalue()}


def _trial_runs(uri: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("moasha")
    assert experiment is not None
    return list(
        client.search_runs([experiment.experiment_id], filter_string="tags.`apc.role` = 'trial'")
    )


def _epochs(uri: str, run_id: str) -> dict[int, dict[str, float]]:
    """Per epoch (step), the objectives MLflow recorded (NaN where absent), with the time the
    driver logged the epoch under the key ``time`` (ms)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    epochs: dict[int, dict[str, float]] = {}
    for name in ("loss", *OBJECTIVES):
        for metric in client.get_metric_history(run_id, name):
            epoch = epochs.setdefault(metric.step, dict.fromkeys(OBJECTIVES, math.nan))
            if name == "loss":  # every epoch logs it: the epoch's arrival time
                epoch["time"] = float(metric.timestamp)
            else:
                epoch[name] = metric.value
    return epochs


def test_stopped_trials_are_killed_tagged_and_pruned(ran: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    from study.runner import build_searcher
    from study.search import optuna_study
    from study.spec import load_spec

    runs = _trial_runs(ran["uri"])
    assert len(runs) == 6
    stopped = {r.data.tags["apc.trial_id"] for r in runs if r.info.status == "KILLED"}
    finished = {r.data.tags["apc.trial_id"] for r in runs if r.info.status == "FINISHED"}
    assert stopped, "no trial was stopped early"
    assert finished, "every trial was stopped"
    assert stopped | finished == {r.data.tags["apc.trial_id"] for r in runs}
    for run in runs:
        epochs = len(_epochs(ran["uri"], run.info.run_id))
        if run.info.status == "KILLED":
            assert epochs < EPOCHS
            assert run.data.tags[STOPPED_TAG] == f"after {epochs} of {EPOCHS} epochs"
        else:
            assert epochs == EPOCHS
            assert STOPPED_TAG not in run.data.tags

    # What Optuna was told, from the searcher's state in Tune's last snapshot.
    spec_path = ran["root"] / "moasha.yaml"
    spec_path.write_text(
        f"name: moasha\nepochs: {EPOCHS}\nscheduler: {{name: mo_asha}}\n"
        "objectives: {map: max, attr_auc: max, params: min}\n"
    )
    searcher = build_searcher(load_spec(spec_path))
    base: Any = searcher  # down to Ray's OptunaSearch, as Tune's SearchGenerator walks
    while (inner := getattr(base, "searcher", None)) is not None:
        base = inner
    # Tune's SearchGenerator saves the innermost searcher to searcher-state-*.pkl (the
    # wrappers' states go to its own search_gen_state file): restore that one.
    base.restore_from_dir(str(ran["root"] / "results" / "moasha"))
    ot_study = optuna_study(searcher)
    # Keyed by Tune's trial id; "<id>#<n>" are repeats the distinct layer skipped.
    states = {
        tid: ot_study.trials[t.number].state for tid, t in base._ot_trials.items() if "#" not in tid
    }
    assert {tid for tid, s in states.items() if s == TrialState.PRUNED} == stopped
    assert {tid for tid, s in states.items() if s == TrialState.COMPLETE} == finished


def _arrivals(uri: str) -> tuple[list[tuple[float, str, int, tuple[float, ...]]], dict[str, int]]:
    """Every epoch of every trial as ``(time, trial, training_iteration, objectives)`` in the
    order the driver logged them, and each trial's epochs run."""
    arrivals = []
    ran = {}
    for run in _trial_runs(uri):
        tid = run.data.tags["apc.trial_id"]
        epochs = _epochs(uri, run.info.run_id)
        ran[tid] = len(epochs)
        for step, values in epochs.items():
            vector = tuple(values[m] for m in OBJECTIVES)
            arrivals.append((values["time"], tid, step + 1, vector))
    return sorted(arrivals), ran


def _replay(
    arrivals: list[tuple[float, str, int, tuple[float, ...]]],
) -> tuple[dict[str, int], list[dict[str, tuple[float, ...]]]]:
    """The rung decisions of the pure functions on the recorded epochs: for each trial the
    epochs it would run, and the rungs' records."""
    milestones = rung_milestones(grace_period=GRACE, reduction_factor=ETA, max_t=EPOCHS)
    rungs: list[dict[str, tuple[float, ...]]] = [{} for _ in milestones]
    runs_to: dict[str, int] = {}
    for _, tid, iteration, vector in arrivals:
        if tid in runs_to:
            continue  # stopped: a report after the stop would be a contradiction anyway
        if iteration in milestones:
            rung = rungs[milestones.index(iteration)]
            rung[tid] = vector
            if not promotes(
                vectors=list(rung.values()),
                directions=list(OBJECTIVES.values()),
                index=len(rung) - 1,
                reduction_factor=ETA,
            ):
                runs_to[tid] = iteration
        elif iteration == EPOCHS:
            runs_to[tid] = iteration
    return runs_to, rungs


def test_every_rung_decision_replays_on_what_mlflow_recorded(ran: dict[str, Any]) -> None:
    """An independent check of the live decisions: `promotes` over the metrics MLflow holds,
    in the order the driver logged them, stops exactly the trials the study stopped, at the
    same epoch. Epochs logged within the same millisecond may be in either order."""
    arrivals, epochs_run = _arrivals(ran["uri"])
    times = [a[0] for a in arrivals]
    tied = [t for t in set(times) if times.count(t) > 1]
    orders = [arrivals]
    if tied:  # rare; every order of the tied epochs is a possible arrival order
        groups = [[a for a in arrivals if a[0] == t] for t in sorted(set(times))]
        orders = [
            [a for group in choice for a in group]
            for choice in itertools.product(*(itertools.permutations(g) for g in groups))
        ]
    assert any(_replay(order)[0] == epochs_run for order in orders), (epochs_run, arrivals)
    assert any(e < EPOCHS for e in epochs_run.values())


def test_the_scheduler_state_in_tunes_snapshot_is_what_the_study_decided(
    ran: dict[str, Any],
) -> None:
    """Tune's last snapshot of the experiment holds the rungs (callback-states-*.pkl);
    loaded back through Ray's own CallbackList into a fresh scheduler, they are the records
    the replay of MLflow's metrics gives, and the scheduler decides on from them."""
    from ray.tune import Callback
    from ray.tune.callback import CallbackList

    experiment = ran["root"] / "results" / "moasha"
    assert list(experiment.glob("callback-states-*.pkl"))
    fresh = MultiObjectiveASHA(
        objectives=OBJECTIVES, max_t=EPOCHS, grace_period=GRACE, reduction_factor=ETA
    )
    # The runner's callbacks: the MLflow mirror (stateless) first, then the snapshot.
    callbacks = CallbackList([Callback(), SchedulerSnapshot(fresh)])
    assert callbacks.can_restore(str(experiment))
    callbacks.restore_from_dir(str(experiment))
    arrivals, _ = _arrivals(ran["uri"])
    _, rungs = _replay(arrivals)
    for k in range(len(fresh.milestones)):
        assert set(fresh.recorded(k)) == set(rungs[k])
        for tid, vector in fresh.recorded(k).items():
            assert vector == pytest.approx(rungs[k][tid], nan_ok=True)
    # A newcomer worse than everything at the first rung is stopped there, since the rung is
    # full again; a fresh scheduler would promote it (the first at its rung).
    worst = {"training_iteration": 1, "map": -1.0, "attr_auc": -1.0, "params": 1e12}
    newcomer = type("T", (), {"trial_id": "newcomer"})()
    assert fresh.on_trial_result(None, newcomer, dict(worst)) == "STOP"
    empty = MultiObjectiveASHA(
        objectives=OBJECTIVES, max_t=EPOCHS, grace_period=GRACE, reduction_factor=ETA
    )
    assert empty.on_trial_result(None, newcomer, dict(worst)) == "CONTINUE"


def test_the_pareto_table_leaves_the_stopped_trials_out(ran: dict[str, Any]) -> None:
    runs = _trial_runs(ran["uri"])
    finished = {r.info.run_name for r in runs if r.info.status == "FINISHED"}
    killed = {r.info.run_name for r in runs if r.info.status == "KILLED"}
    stdout = ran["stdout"]
    summary = re.search(r"Pareto front of study 'moasha': (\d+) of (\d+) finished trials", stdout)
    assert summary is not None, stdout
    assert int(summary.group(2)) == len(finished)
    table = stdout[summary.end() :]
    for name in killed:
        assert name not in table
    assert any(name in table for name in finished)


# --- Tuner.restore: the rungs come back from Tune's snapshot -----------------------------------

#: Per trial, its ``map`` at the first epoch and at every later one; ``d`` leads the first rung
#: and is the worst at the second, where it crashes (before reporting) in the first run.
_VALUES = {"a": (0.1, 0.5), "b": (0.2, 0.6), "c": (0.3, 0.7), "d": (0.9, 0.0)}


def _make_synthetic() -> Any:
    # A closure, so that Ray's workers get it by value (they cannot import the tests).
    def _synthetic(config: dict[str, Any]) -> None:
        from ray import tune

        first, later = _VALUES[config["name"]]
        for iteration in range(1, EPOCHS + 1):
            if config["name"] == "d" and iteration == 2 and Path(config["crash_flag"]).exists():
                raise RuntimeError("d: crashed before its second report")
            tune.report({"map": first if iteration == 1 else later})

    return _synthetic


def _tuner(storage: Path, crash_flag: Path) -> Any:
    from ray import tune

    scheduler = MultiObjectiveASHA(
        objectives={"map": "max"}, max_t=EPOCHS, grace_period=GRACE, reduction_factor=ETA
    )
    return tune.Tuner(
        _make_synthetic(),
        param_space={
            "name": tune.grid_search(list(_VALUES)),
            "crash_flag": str(crash_flag),
        },
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(
            name="restored",
            storage_path=str(storage),
            callbacks=[SchedulerSnapshot(scheduler)],
            verbose=0,
        ),
    )


def test_a_restored_experiment_decides_with_the_rungs_of_before(
    local_store: tuple[str, Path], tmp_path: Path
) -> None:
    """Trials a, b, c, d one at a time; d leads rung 1 and crashes before rung 2. Restored
    (Tuner.restore, errored trials run again), d reaches rung 2, where a, b and c are recorded
    in the snapshot and d is the worst of four: stopped after 2 epochs. A scheduler that came
    back with empty rungs (Tune's own behaviour for a scheduler) would promote it, the first
    at its rung, and d would run all 4."""
    from ray import tune

    flag = tmp_path / "crash"
    flag.touch()
    first = _tuner(tmp_path, flag).fit()
    assert first.num_errors == 1
    by_name = {r.config["name"]: r for r in (first[i] for i in range(len(first)))}
    assert {n: r.metrics["training_iteration"] for n, r in by_name.items() if n != "d"} == {
        "a": EPOCHS,
        "b": EPOCHS,
        "c": EPOCHS,
    }

    flag.unlink()
    restored = tune.Tuner.restore(
        str(tmp_path / "restored"), trainable=_make_synthetic(), restart_errored=True
    )
    second = restored.fit()
    assert second.num_errors == 0
    iterations = {
        r.config["name"]: r.metrics["training_iteration"]
        for r in (second[i] for i in range(len(second)))
    }
    assert iterations == {"a": EPOCHS, "b": EPOCHS, "c": EPOCHS, "d": 2}
