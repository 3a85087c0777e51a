"""StudyTracker on a real SQLite store: a resumed study finds its runs, replays its spool,
and discards the runs of trials Tune never knew."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from study.presets import DEMO_SPEC
from study.spec import load_spec
from study.tracking import StudyTracker


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("tracking")
    return f"sqlite:///{root}/mlflow.db", root


def _tracker(uri: str, root: Path, name: str) -> StudyTracker:
    return StudyTracker(
        uri, name=name, objectives={"map": "max"}, spool=root / name / "pending.jsonl"
    )


def test_a_resumed_study_keeps_its_runs_and_delivers_its_spool(store: tuple[str, Path]) -> None:
    uri, root = store
    first = _tracker(uri, root, "resumable")
    spec = load_spec(DEMO_SPEC, overrides=["name=resumable"])
    parent = first.start_study(spec, "name: resumable\n", "name: resumable\n")
    first.trial_started("t1", {"method": "distillation", "matching": "swa"})
    first.trial_result("t1", {"map": 10.0, "loss": 2.0, "epoch": 0, "node_id": "n1"})
    assert first.flush(30.0)
    run_id = first.trial_runs["t1"]
    # What the MLflow server never got before the driver died: epoch 1, spooled.
    first.spool.parent.mkdir(parents=True, exist_ok=True)
    first.spool.write_text(
        json.dumps({"op": "metrics", "trial": "t1", "metrics": {"map": 20.0}, "step": 1, "time": 1})
        + "\n"
    )

    second = _tracker(uri, root, "resumable")
    assert second.attach(parent) == 1
    assert second.flush(30.0)
    assert not second.spool.exists()  # deleted once its records were in
    assert second.trial_runs == {"t1": run_id}
    assert second.client.get_run(parent).info.status == "RUNNING"
    second.trial_started("t1", {"method": "distillation", "matching": "swa"})  # restarted
    # Resumed from the checkpoint of epoch 0: epoch 1 runs again.
    second.trial_result("t1", {"map": 25.0, "epoch": 1, "node_id": "n2"})
    second.trial_result("t1", {"map": 30.0, "epoch": 2, "node_id": "n2"})
    second.trial_ended("t1", status="FINISHED")
    assert second.close(status="FINISHED", timeout_s=30.0) == 0

    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run_id, "map")
    assert sorted((m.step, m.value) for m in history) == [
        (0, 10.0),
        (1, 20.0),
        (1, 25.0),
        (2, 30.0),
    ]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["apc.node_ids"] == "n1,n2"  # it moved, and the history says so
    assert run.data.tags["apc.repeated_epochs"].startswith("1 (re-run after a resume")
    assert run.data.metrics["map"] == 30.0
    assert client.get_run(parent).info.status == "FINISHED"


def test_runs_of_trials_tune_does_not_know_are_discarded(store: tuple[str, Path]) -> None:
    uri, root = store
    tracker = _tracker(uri, root, "orphans")
    spec = load_spec(DEMO_SPEC, overrides=["name=orphans"])
    tracker.start_study(spec, "name: orphans\n", "name: orphans\n")
    for trial_id in ("kept", "orphan"):
        tracker.trial_started(trial_id, {"method": "distillation"})
    tracker.trial_ended("kept", status="FINISHED")
    tracker.discard_orphans(["kept"])
    assert tracker.flush(30.0)
    assert set(tracker.trial_runs) == {"kept"}
    client = tracker.client
    active = client.search_runs([tracker.experiment_id], "tags.`apc.role` = 'trial'")
    assert [r.data.tags["apc.trial_id"] for r in active] == ["kept"]
    (deleted,) = client.search_runs(
        [tracker.experiment_id], "tags.`apc.role` = 'trial'", run_view_type=ViewType.DELETED_ONLY
    )
    assert deleted.data.tags["apc.trial_id"] == "orphan"
    assert deleted.info.status == "KILLED"
    assert deleted.data.tags["apc.orphaned"].startswith("started after Tune's last snapshot")
    tracker.close(status="FINISHED", timeout_s=10.0)


def test_backfill_logs_what_tune_recorded_and_mlflow_lacks(store: tuple[str, Path]) -> None:
    """The driver died with records still queued: Tune's result.json has them, MLflow not."""
    uri, root = store
    tracker = _tracker(uri, root, "backfill")
    spec = load_spec(DEMO_SPEC, overrides=["name=backfill"])
    tracker.start_study(spec, "name: backfill\n", "name: backfill\n")
    tracker.trial_started("partly", {"method": "distillation"})
    tracker.trial_result("partly", {"loss": 1.0, "epoch": 0, "node_id": "n1"})
    assert tracker.flush(30.0)

    def result(epoch: int, loss: float) -> dict[str, object]:
        return {
            "epoch": epoch,
            "loss": loss,
            "map": 10.0 * epoch,
            "node_id": "n1",
            "timestamp": 1_700_000_000 + epoch,
            "config": {"matching": "swa"},
        }

    tracker.backfill(
        [
            {
                "trial": "partly",
                "config": {"matching": "swa"},
                "status": "TERMINATED",
                "results": [result(0, 1.0), result(1, 0.5)],
                "checkpoint": None,
            },
            {
                "trial": "unseen",
                "config": {"matching": "none", "student_width": 2},
                "status": "RUNNING",
                "results": [result(0, 2.0)],
                "checkpoint": None,
            },
        ],
        method="distillation",
        teacher_run_id="teacher-run",
    )
    assert tracker.flush(30.0)
    client = tracker.client
    partly = client.get_run(tracker.trial_runs["partly"])
    history = client.get_metric_history(partly.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5)]  # 0 not twice
    assert partly.info.status == "FINISHED"  # Tune had ended it
    unseen = client.get_run(tracker.trial_runs["unseen"])
    assert unseen.data.params == {
        "method": "distillation",
        "teacher_run_id": "teacher-run",
        "matching": "none",
        "student_width": "2",
    }
    assert unseen.data.metrics["loss"] == 2.0
    assert unseen.info.status == "RUNNING"  # Tune goes on with it
    assert unseen.data.tags["apc.node_ids"] == "n1"
    tracker.close(status="FINISHED", timeout_s=10.0)


def test_a_trial_the_scheduler_stopped_ends_killed_and_tagged(store: tuple[str, Path]) -> None:
    from ray.tune.experiment import Trial

    from study.tracking import tune_callback

    uri, root = store
    tracker = _tracker(uri, root, "asha")
    spec = load_spec(DEMO_SPEC, overrides=["name=asha"])
    tracker.start_study(spec, "name: asha\n", "name: asha\n")
    callback = tune_callback(tracker, method="distillation", teacher_run_id="t", iterations=6)
    statuses = {}
    for trial_id, iterations in (("stopped", 2), ("full", 6)):
        trial = Trial("distillation_trainable", config={}, trial_id=trial_id, stub=True)
        callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
        result = {"map": 40.0, "epoch": iterations - 1, "training_iteration": iterations}
        trial.update_last_result(result)  # type: ignore[no-untyped-call]
        callback.on_trial_result(iteration=1, trials=[trial], trial=trial, result=result)
        callback.on_trial_complete(iteration=2, trials=[trial], trial=trial)
        assert tracker.flush(30.0)
        run = tracker.client.get_run(tracker.trial_runs[trial_id])
        statuses[trial_id] = (run.info.status, run.data.tags.get("apc.stopped_early"))
    assert statuses == {"stopped": ("KILLED", "after 2 of 6 epochs"), "full": ("FINISHED", None)}
    tracker.close(status="FINISHED", timeout_s=10.0)


def _marks(client: MlflowClient, tracker: StudyTracker) -> dict[str, tuple[str, str | None]]:
    """Trial id -> (apc.pareto, apc.pareto_rank) as MLflow holds them."""
    from analysis.layout import PARETO_RANK_TAG, PARETO_TAG

    out = {}
    for trial_id, run_id in tracker.trial_runs.items():
        tags = client.get_run(run_id).data.tags
        out[trial_id] = (tags.get(PARETO_TAG, ""), tags.get(PARETO_RANK_TAG))
    return out


def test_the_front_is_marked_after_each_trial_ends(store: tuple[str, Path]) -> None:
    """After every trial that ends, the trial runs on the front of the FINISHED trials carry
    apc.pareto=true and their row in `apc pareto`'s table, the others false and no rank."""
    from analysis.layout import NOTE_TAG, PARETO_FILTER_TAG, PARETO_OBJECTIVES_TAG

    uri, root = store
    tracker = StudyTracker(
        uri,
        name="marked",
        objectives={"map": "max", "params": "min"},
        spool=root / "marked" / "pending.jsonl",
    )
    spec = load_spec(DEMO_SPEC, overrides=["name=marked"])
    parent = tracker.start_study(spec, "name: marked\n", "name: marked\n")
    client = MlflowClient(tracking_uri=uri)

    def trial(trial_id: str, map_: float, params: float, status: str = "FINISHED") -> None:
        tracker.trial_started(trial_id, {"method": "distillation", "matching": "swa"})
        tracker.trial_result(trial_id, {"map": map_, "params": params, "epoch": 0})
        tracker.trial_ended(trial_id, status=status)  # type: ignore[arg-type]
        assert tracker.flush(30.0)

    trial("a", 50.0, 100.0)
    assert _marks(client, tracker) == {"a": ("true", "1")}
    trial("b", 60.0, 200.0)  # better map, more params: both on the front, b first
    assert _marks(client, tracker) == {"a": ("true", "2"), "b": ("true", "1")}
    trial("c", 99.0, 1.0, status="FAILED")  # would dominate both, but did not finish
    assert _marks(client, tracker)["c"] == ("false", None)
    trial("d", 70.0, 50.0)  # dominates both: their ranks go
    assert _marks(client, tracker) == {
        "a": ("false", None),
        "b": ("false", None),
        "c": ("false", None),
        "d": ("true", "1"),
    }
    assert tracker.close(status="FINISHED", timeout_s=30.0) == 0
    tags = client.get_run(parent).data.tags
    assert tags[PARETO_OBJECTIVES_TAG] == "map:max,params:min"
    assert tags[PARETO_FILTER_TAG] == (
        f"tags.mlflow.parentRunId = '{parent}' AND attributes.status = 'FINISHED'"
    )
    note = tags[NOTE_TAG]
    assert "Pareto front over map:max,params:min" in note
    assert f"`{tags[PARETO_FILTER_TAG]}`" in note
    assert '    tags.apc.pareto = "true"' in note.splitlines()
    # The UI's search lists exactly the front.
    found = client.search_runs([tracker.experiment_id], filter_string='tags.apc.pareto = "true"')
    assert [r.info.run_id for r in found] == [tracker.trial_runs["d"]]
