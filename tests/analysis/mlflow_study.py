"""Write a study into an MLflow store the way the runner lays it out (docs/design.md#mlflow-layout).

Shared by the analysis and CLI tests: one experiment per study; a parent run (``apc.role=study``),
a teacher run (``apc.role=teacher``) and one run per trial (``apc.role=trial``, nested under the
parent through ``mlflow.parentRunId``, named by its Ray trial id) with per-epoch metrics at steps
0..2, the last being the final value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

STUDY = "attr_study"
OTHER = "other_study"
DELETED = "deleted_study"
T0 = 1_700_000_000_000  # ms; runs start one second apart so their order is known


@dataclass(frozen=True)
class Trial:
    """One trial: its params (only those that apply) and its final metrics."""

    name: str
    params: dict[str, str]
    final: dict[str, float]
    status: str = "FINISHED"


def _trial(i: int, matching: str, width: int, final: dict[str, float], **more: str) -> Trial:
    params = {"method": "distillation", "matching": matching, "student_width": str(width)}
    params.update(more)
    return Trial(f"distill_3f2a_{i:05d}", params, final)


#: The trials of STUDY. Exact duplicates (1, 2), a dominated one (0, 4, 6), a trial that never
#: logged attr_auc (7), one with a NaN attr_auc (8), heavy ties on params.
TRIALS: list[Trial] = [
    _trial(0, "none", 4, {"map": 60.0, "attr_auc": 70.0, "params": 1000.0, "attr_cos": 0.5}),
    _trial(
        1, "ewa", 4, {"map": 62.0, "attr_auc": 72.0, "params": 1000.0, "attr_cos": 0.8}, beta="1.0"
    ),
    _trial(
        2, "swa", 4, {"map": 62.0, "attr_auc": 72.0, "params": 1000.0, "attr_cos": 0.9}, beta="2"
    ),
    _trial(
        3,
        "sswa",
        8,
        {"map": 65.0, "attr_auc": 71.0, "params": 4000.0, "attr_cos": 0.7},
        beta="2.0",
        drop_p="0.1",
        schedule="1",
    ),
    _trial(
        4,
        "swa",
        8,
        {"map": 64.0, "attr_auc": 71.0, "params": 4000.0, "attr_cos": 0.95},
        beta="0.5",
        schedule="cosine",
    ),
    _trial(
        5,
        "sswa",
        2,
        {"map": 55.0, "attr_auc": 69.0, "params": 250.0, "attr_cos": 0.6},
        beta="4",
        drop_p="0.3",
    ),
    _trial(
        6, "ewa", 2, {"map": 55.0, "attr_auc": 68.0, "params": 250.0, "attr_cos": 0.65}, beta="8.0"
    ),
    Trial(
        "distill_3f2a_00007",
        {"method": "distillation", "matching": "swa", "student_width": "16", "beta": "1e-1"},
        {"map": 66.0, "params": 16000.0},
        status="FAILED",
    ),
    _trial(
        8,
        "swa",
        8,
        {"map": 70.0, "attr_auc": math.nan, "params": 4000.0, "attr_cos": 0.1},
        beta="3",
    ),
]


@dataclass
class StudyStore:
    """Where the study lies and the ids the runner would have made."""

    uri: str
    db: Path
    parent_run_id: str = ""
    teacher_run_id: str = ""
    trial_run_ids: dict[str, str] = field(default_factory=dict)
    deleted_run_id: str = ""


def write_studies(root: Path) -> StudyStore:
    """Write STUDY (and OTHER, DELETED) into a fresh SQLite store under ``root``."""
    db = root / "mlflow.db"
    store = StudyStore(uri=f"sqlite:///{db}", db=db)
    client = MlflowClient(tracking_uri=store.uri)
    artifacts = (root / "artifacts").as_uri()
    experiment = client.create_experiment(STUDY, artifact_location=f"{artifacts}/{STUDY}")
    parent = client.create_run(
        experiment, start_time=T0, tags={"apc.role": "study"}, run_name=STUDY
    )
    store.parent_run_id = parent.info.run_id
    # The spec as params of the parent run: they must not leak into the trials' table.
    client.log_batch(
        parent.info.run_id, params=[Param("seed", "0"), Param("method", "distillation")]
    )
    nested = {"mlflow.parentRunId": parent.info.run_id}
    teacher = client.create_run(
        experiment, start_time=T0 + 1000, tags={"apc.role": "teacher", **nested}, run_name="teacher"
    )
    store.teacher_run_id = teacher.info.run_id
    client.log_batch(teacher.info.run_id, metrics=[Metric("map", 80.0, T0, 0)])
    client.set_terminated(teacher.info.run_id)
    for i, trial in enumerate(TRIALS):
        start = T0 + 2000 + 1000 * i
        run = client.create_run(
            experiment, start_time=start, tags={"apc.role": "trial", **nested}, run_name=trial.name
        )
        params = {**trial.params, "teacher_run_id": teacher.info.run_id}
        # Epochs 0..2; epoch 1 beats the final value, so "latest" and "best" differ.
        metrics = [
            Metric(key, value + offset, start + step, step)
            for key, value in trial.final.items()
            for step, offset in enumerate((-5.0, 3.0, 0.0))
        ]
        client.log_batch(
            run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()]
        )
        client.set_terminated(run.info.run_id, status=trial.status, end_time=start + 500)
        store.trial_run_ids[trial.name] = run.info.run_id
    gone = client.create_run(
        experiment, start_time=T0 + 99_000, tags={"apc.role": "trial", **nested}, run_name="gone"
    )
    client.log_batch(gone.info.run_id, metrics=[Metric("map", 99.0, T0, 0)])
    client.delete_run(gone.info.run_id)
    store.deleted_run_id = gone.info.run_id

    other = client.create_experiment(OTHER, artifact_location=f"{artifacts}/{OTHER}")
    client.create_run(other, tags={"apc.role": "study"}, run_name=OTHER)
    deleted = client.create_experiment(DELETED, artifact_location=f"{artifacts}/{DELETED}")
    client.delete_experiment(deleted)
    return store


def dominates(a: list[float], b: list[float]) -> bool:
    """a dominates b: no worse everywhere, better somewhere (values oriented: lower is better)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def expected_front(objectives: dict[str, str], trials: list[Trial] = TRIALS) -> set[str]:
    """The names of the trials on the front, by brute force over TRIALS' final values."""
    points = {}
    for trial in trials:
        values = [trial.final.get(name, math.nan) for name in objectives]
        if any(math.isnan(v) for v in values):
            continue
        points[trial.name] = [
            -v if direction == "max" else v
            for v, direction in zip(values, objectives.values(), strict=True)
        ]
    return {
        name
        for name, point in points.items()
        if not any(dominates(other, point) for other in points.values())
    }


_STORES: dict[str, StudyStore] = {}


def shared_store(root_factory: pytest.TempPathFactory) -> StudyStore:
    """One store for the whole test session (creating an MLflow SQLite schema takes seconds).

    Tests only read it; a test that changes a store writes its own with ``write_studies``.
    """
    if "store" not in _STORES:
        _STORES["store"] = write_studies(root_factory.mktemp("mlflow_store"))
    return _STORES["store"]
