"""Durable tracking (issue #14): no record is lost to an outage that cuts it short, a record
MLflow refuses is quarantined and costs only itself, and torn lines in a spool or in Tune's
``result.json`` never stop ``apc resume``.

Real components throughout: a SQLite MLflow store; for the outage, a real ``mlflow server``
behind a proxy that drops requests from an exact one on (tests/study/mlflow_outage.py); for
``apc resume``, a real study on local Ray.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from study.presets import DEMO_SPEC
from study.spec import load_spec
from study.tracking import StudyTracker
from tests.study.mlflow_outage import MlflowServer, OutageProxy

PARAMS = {"method": "distillation", "matching": "swa", "beta": "2.0", "teacher_run_id": "t"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("durable")
    return f"sqlite:///{root}/mlflow.db", root


def _tracker(uri: str, root: Path, name: str) -> StudyTracker:
    return StudyTracker(
        uri, name=name, objectives={"map": "max"}, spool=root / name / "pending.jsonl"
    )


def _started(uri: str, root: Path, name: str) -> StudyTracker:
    tracker = _tracker(uri, root, name)
    spec = load_spec(DEMO_SPEC, overrides=[f"name={name}"])
    tracker.start_study(spec, f"name: {name}\n", f"name: {name}\n")
    return tracker


def _trial_run(client: MlflowClient, tracker: StudyTracker, trial_id: str) -> Any:
    (run,) = client.search_runs([tracker.experiment_id], f"tags.`apc.trial_id` = '{trial_id}'")
    return run


def _steps(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


# 1. A trial's run and its params: one record, applied again as a whole after an outage.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    mlflow = MlflowServer(tmp_path_factory.mktemp("server"))
    mlflow.start()
    try:
        yield mlflow
    finally:
        mlflow.stop()


@pytest.mark.integration
def test_params_survive_an_outage_between_run_creation_and_params(
    server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One try per request: the log queue, not MLflow's own retries, must ride out the outage.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    proxy = OutageProxy(server.port)
    try:
        tracker = _started(proxy.uri, tmp_path, "outage")

        def trial_run_created(method: str, path: str, body: bytes) -> bool:
            return path.endswith("/runs/create") and b'"apc.trial_id"' in body

        # The store goes away right after the trial's run is created: its params are next.
        proxy.cut_after = trial_run_created
        tracker.trial_started("t1", PARAMS)
        tracker.trial_result("t1", {"map": 10.0, "loss": 1.0, "epoch": 0})
        proxy.wait_dropped(2, timeout_s=60)  # tried, failed, tried again
        assert not tracker.flush(0.5)
        proxy.down.clear()
        tracker.trial_ended("t1", status="FINISHED")
        assert tracker.close(status="FINISHED", timeout_s=60) == 0
        assert tracker.outage_s > 0
    finally:
        proxy.close()
    client = MlflowClient(tracking_uri=server.uri)
    run = _trial_run(client, tracker, "t1")
    assert run.data.params == PARAMS
    assert run.data.metrics["map"] == 10.0
    assert run.info.status == "FINISHED"


def test_a_trial_run_left_without_params_gets_them_on_resume(store: tuple[str, Path]) -> None:
    """An earlier driver died between creating a trial's run and logging its params."""
    uri, root = store
    first = _started(uri, root, "paramless")
    first.client.create_run(
        first.experiment_id,
        run_name="t1",
        tags={"apc.role": "trial", "mlflow.parentRunId": first.parent_run_id, "apc.trial_id": "t1"},
    )
    first.client.log_param(_trial_run(first.client, first, "t1").info.run_id, "method", "x")
    first.close(status="KILLED", timeout_s=10)

    second = _tracker(uri, root, "paramless")
    second.attach(first.parent_run_id)
    # Tune restarts the trial (or backfill starts it): its start names every param.
    second.trial_started("t1", PARAMS)
    assert second.flush(30)
    run = _trial_run(second.client, second, "t1")
    # What the run held stays (MLflow refuses to change a param); what it lacked is logged.
    assert run.data.params == {**PARAMS, "method": "x"}
    assert second.quarantined == 0
    second.close(status="FINISHED", timeout_s=10)


# 2. A record MLflow refuses: quarantined with its reason, the trial's later records land.


def _quarantined(tracker: StudyTracker) -> list[dict[str, Any]]:
    return [json.loads(line) for line in tracker.quarantine.read_text().splitlines()]


def test_refused_records_are_quarantined_and_the_trials_later_records_land(
    store: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    uri, root = store
    tracker = _started(uri, root, "refusals")
    with caplog.at_level(logging.WARNING, logger="study.log_queue"):
        # MLflow refuses names with a '?' (INVALID_PARAMETER_VALUE): a param, then a tag.
        tracker.trial_started("t1", {**PARAMS, "odd?": "1"})
        tracker.trial_result("t1", {"map": 10.0, "epoch": 0})
        tracker.trial_tag("t1", "also odd?", "x")
        tracker.trial_result("t1", {"map": 20.0, "epoch": 1})
        tracker.trial_ended("t1", status="FINISHED")
        assert tracker.flush(30)
    run = _trial_run(tracker.client, tracker, "t1")
    assert run.data.params == PARAMS  # the params MLflow takes are in
    assert _steps(tracker.client, run.info.run_id, "map") == [(0, 10.0), (1, 20.0)]
    assert run.info.status == "FINISHED"
    assert "also odd?" not in run.data.tags

    kept = _quarantined(tracker)
    assert [k["record"]["op"] for k in kept] == ["start", "tag"]
    assert kept[0]["record"]["params"]["odd?"] == "1"
    assert kept[0]["reason"].startswith(
        "_ParamsRefusedError: trial t1: MLflow refused params "
        "['odd?'] (odd?: Invalid value \"odd?\" for parameter"
    )
    assert kept[1]["reason"].startswith('MlflowException: Invalid value "also odd?" for parameter')
    assert tracker.quarantined == 2
    (warning,) = [r.getMessage() for r in caplog.records]  # once, not once per record
    assert warning.startswith("apc: MLflow refused a start record (_ParamsRefusedError: trial t1")
    assert f"kept with its reason in {tracker.quarantine}" in warning
    tracker.close(status="FINISHED", timeout_s=10)


def test_a_refused_run_creation_does_not_cost_the_trials_later_records(
    store: tuple[str, Path],
) -> None:
    """Refused as a whole, a start once left the trial without a run, and each later record
    of it failed (KeyError) and was dropped too."""
    uri, root = store
    tracker = _started(uri, root, "refused-start")
    # MLflow refuses runs in a deleted experiment (someone deleted it in the UI, say).
    tracker.client.delete_experiment(tracker.experiment_id)
    tracker.trial_started("t1", PARAMS)
    assert tracker.flush(30)
    tracker.client.restore_experiment(tracker.experiment_id)  # ... and restored it
    tracker.trial_result("t1", {"map": 10.0, "epoch": 0})
    tracker.trial_ended("t1", status="FINISHED")
    assert tracker.flush(30)
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.`apc.trial_id` = 't1'")
    assert len(runs) == 1  # created by the trial's first record after the refused start
    assert runs[0].data.params == PARAMS
    assert _steps(tracker.client, runs[0].info.run_id, "map") == [(0, 10.0)]
    assert runs[0].info.status == "FINISHED"
    (kept,) = _quarantined(tracker)
    assert kept["record"]["op"] == "start"
    assert kept["reason"] == (
        f"MlflowException: The experiment {tracker.experiment_id} must be in the 'active' "
        "state. Current state is deleted."
    )
    tracker.close(status="FINISHED", timeout_s=10)


def test_a_record_of_a_trial_that_never_started_is_quarantined_not_raised(
    store: tuple[str, Path],
) -> None:
    uri, root = store
    tracker = _started(uri, root, "never-started")
    tracker.trial_result("ghost", {"map": 1.0, "epoch": 0})
    tracker.trial_started("t1", PARAMS)
    tracker.trial_result("t1", {"map": 2.0, "epoch": 0})
    assert tracker.flush(30)
    (kept,) = _quarantined(tracker)
    assert kept["reason"].startswith("LookupError: trial ghost: no run, and no start record")
    assert set(tracker.trial_runs) == {"t1"}
    tracker.close(status="FINISHED", timeout_s=10)


# 3. Torn lines: skipped with a warning, never the end of `apc resume`.


def test_a_torn_spool_line_is_skipped_before_the_study_is_marked_running(
    store: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    uri, root = store
    first = _started(uri, root, "torn-spool")
    first.trial_started("t1", PARAMS)
    assert first.flush(30)
    first.client.set_terminated(first.parent_run_id, "FINISHED")
    record = {"op": "metrics", "trial": "t1", "metrics": {"map": 5.0}, "step": 0, "time": 1}
    first.spool.parent.mkdir(parents=True, exist_ok=True)
    first.spool.write_text(json.dumps(record) + "\n" + json.dumps(record)[:20])  # killed

    second = _tracker(uri, root, "torn-spool")
    with caplog.at_level(logging.WARNING, logger="study.log_queue"):
        assert second.attach(first.parent_run_id) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"apc: skipped 1 torn line(s) of {second.spool} (line 2: not a whole JSON object, e.g. "
        "a write cut short by a kill); the other 1 line(s) are read"
    ]
    assert second.flush(30)
    assert not second.spool.exists()
    run = _trial_run(second.client, second, "t1")
    assert _steps(second.client, run.info.run_id, "map") == [(0, 5.0)]
    assert second.close(status="FINISHED", timeout_s=10) == 0
    assert second.client.get_run(first.parent_run_id).info.status == "FINISHED"
    first.close(status="FINISHED", timeout_s=10)


def test_a_spool_of_torn_lines_only_is_removed_once_read(store: tuple[str, Path]) -> None:
    """Else every later `apc resume` of the finished study would find it and run again."""
    uri, root = store
    first = _started(uri, root, "torn-only")
    first.close(status="FINISHED", timeout_s=10)
    first.spool.parent.mkdir(parents=True, exist_ok=True)
    first.spool.write_text('{"op": "metr')
    second = _tracker(uri, root, "torn-only")
    assert second.attach(first.parent_run_id) == 0
    assert second.flush(30)
    assert not second.spool.exists()
    second.close(status="FINISHED", timeout_s=10)


# Minutes of a real study torn and resumed: the slow tier.
@pytest.mark.integration
@pytest.mark.slow
def test_resume_backfills_a_finished_study_from_a_torn_spool_and_result_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A finished study whose driver spooled records: `apc resume` delivers them, though the
    spool's last line and a trial's result.json end torn, and the study ends FINISHED. Its
    search space is a file given by an absolute path, which `apc resume` took for a built-in
    name and died on before #14."""
    from search_spaces import builtin_search_space_path
    from study.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "results"
    space = tmp_path / "my" / "spaces" / "kd.yaml"
    space.parent.mkdir(parents=True)
    space.write_text(builtin_search_space_path("distillation").read_text())
    code = main(
        [
            "run",
            "--name",
            "done",
            "--trials",
            "1",
            "--tracking-uri",
            uri,
            "--storage",
            str(storage),
            "--set",
            f"search_space={space}",
            "--set",
            "epochs=1",
            "--set",
            "dataset.train_size=16",
            "--set",
            "dataset.val_size=8",
            "--set",
            "dataset.image_size=32",
            "--set",
            "teacher.epochs=1",
            "--set",
            "training.batch_size=8",
            "--set",
            "max_concurrent=1",
            "--set",
            "enqueue=[{matching: none, student_width: 2}]",
        ]
    )
    assert code == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("done")
    assert experiment is not None
    (trial,) = client.search_runs([experiment.experiment_id], "tags.`apc.role` = 'trial'")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`apc.role` = 'study'")
    assert parent.info.status == "FINISHED"
    trial_id = trial.data.tags["apc.trial_id"]
    # What the driver could not deliver before it ended, its last line cut short.
    spool = storage / "done" / "mlflow-pending.jsonl"
    record = {"op": "tag", "trial": trial_id, "key": "apc.late", "value": "delivered"}
    spool.write_text(json.dumps(record) + "\n" + json.dumps(record)[:25])
    (result_json,) = (storage / "done").glob("*/result.json")
    with result_json.open("a") as file:
        file.write('{"epoch": 1, "map": ')  # the trial's node died mid-write

    with caplog.at_level(logging.WARNING, logger="study.log_queue"):
        assert main(["resume", "done", "--tracking-uri", uri]) == 0
    torn = [r.getMessage() for r in caplog.records if "torn line" in r.getMessage()]
    assert len(torn) == 2
    assert any(str(spool) in message for message in torn)
    assert any(f"{result_json.parent}/result.json" in message for message in torn)
    assert not spool.exists()
    run = client.get_run(trial.info.run_id)
    assert run.data.tags["apc.late"] == "delivered"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "map")] == [0]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
