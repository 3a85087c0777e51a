"""A study's lifecycle (study.lifecycle): a name is never burnt, one driver per study, and
`apc run` refuses what would overwrite another study, each with the way out in the message.

Real drivers in subprocesses (killed with SIGKILL, as a lost head or an OOM kill would),
a real SQLite MLflow store and real Ray Tune.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.cli import main
from study.lifecycle import LOCK_FILE, StudyLockedError, driver_lock

ROOT = Path(__file__).resolve().parents[2]
TINY: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "shapes", "image_size": 32, "train_size": 16, "val_size": 8},
    "teacher": {"epochs": 1},
    "trials": 1,
    "epochs": 1,
    "max_concurrent": 1,
    "enqueue": [{"matching": "none", "student_width": 2}],
}


def _spec(folder: Path, **changes: Any) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def _store(tmp_path: Path) -> tuple[str, Path]:
    return f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "results"


def _run(tmp_path: Path, spec: Path, *extra: str) -> int:
    uri, storage = _store(tmp_path)
    return main(["run", str(spec), "--tracking-uri", uri, "--storage", str(storage), *extra])


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding study 'tiny''s driver lock, as a running driver does."""
    folder = _store(tmp_path)[1] / "tiny"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from study.lifecycle import driver_lock\n"
        f"with driver_lock(Path({str(folder)!r}), name='tiny'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_the_lock_names_its_holder_and_dies_with_it(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    folder = _store(tmp_path)[1] / "tiny"
    with pytest.raises(StudyLockedError) as caught, driver_lock(folder, name="tiny"):
        pass
    (problem,) = caught.value.problems
    assert problem.startswith(f"name: study 'tiny' is in use by apc driver pid {holder.pid} on ")
    assert str(folder / LOCK_FILE) in problem
    holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
    holder.wait()
    with driver_lock(folder, name="tiny"):
        assert f"pid {os.getpid()} " in (folder / LOCK_FILE).read_text()


def test_a_second_driver_exits_2_naming_the_holder(
    tmp_path: Path, holder: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, _spec(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        f"apc run: name: study 'tiny' is in use by apc driver pid {holder.pid}"
    )
    assert not (tmp_path / "mlflow.db").exists() or _study_runs(_store(tmp_path)[0]) == []


def test_resume_while_the_driver_runs_exits_2_naming_it(
    tmp_path: Path, holder: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from study.runner import PENDING_FILE, effective_spec_text
    from study.spec import load_spec
    from study.tracking import StudyTracker

    uri, storage = _store(tmp_path)
    spec_path = _spec(tmp_path, tracking_uri=uri, storage_path=str(storage))
    spec = load_spec(spec_path)
    tracker = StudyTracker(
        uri, name="tiny", objectives=spec.objectives, spool=storage / "tiny" / PENDING_FILE
    )
    data = yaml.safe_load(spec_path.read_text())
    tracker.start_study(spec, spec_path.read_text(), effective_spec_text(data, base_dir=tmp_path))
    capsys.readouterr()
    assert main(["resume", "tiny", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"apc resume: name: study 'tiny' is in use by apc driver pid {holder.pid}"
    )


def _study_runs(uri: str, *, deleted: bool = False) -> list[Any]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    if experiment is None:
        return []
    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    return list(client.search_runs([experiment.experiment_id], run_view_type=view))


def test_a_deleted_experiment_of_that_name_is_refused_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    uri, storage = _store(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tiny")
    client.delete_experiment(experiment)
    capsys.readouterr()
    assert _run(tmp_path, _spec(tmp_path)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"apc run: name: study 'tiny' was deleted from {uri} (experiment {experiment}); "
        f"restore it with `mlflow experiments restore --experiment-id {experiment}`, remove it "
        "for good with `mlflow gc`, or choose another --name"
    )
    assert not storage.exists()  # nothing written


def test_a_stale_spool_of_that_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.runner import PENDING_FILE

    spool = _store(tmp_path)[1] / "tiny" / PENDING_FILE
    spool.parent.mkdir(parents=True)
    spool.write_text('{"op": "end_study", "status": "FINISHED"}\n')
    assert _run(tmp_path, _spec(tmp_path)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"apc run: name: {spool} holds MLflow records of an earlier study")
    assert spool.read_text() == '{"op": "end_study", "status": "FINISHED"}\n'  # kept


# Minutes of a real study killed and run again: the slow tier, with the cluster kill tests.
@pytest.mark.integration
@pytest.mark.slow
def test_a_driver_killed_in_the_teacher_stage_leaves_a_name_that_runs_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, storage = _store(tmp_path)
    slow = _spec(tmp_path, teacher={"epochs": 200})
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "study.cli",
            "run",
            str(slow),
            "--tracking-uri",
            uri,
            "--storage",
            str(storage),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert driver.stdout is not None
    deadline = time.monotonic() + 120
    for line in driver.stdout:  # the study run exists once the teacher reports
        if line.startswith("teacher epoch 1/") or time.monotonic() > deadline:
            break
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    (killed,) = _study_runs(uri)
    assert killed.info.status == "RUNNING"  # nobody ended it

    capsys.readouterr()
    assert main(["resume", "tiny", "--tracking-uri", uri]) == 2
    assert "run it again under its name (`apc run SPEC --name tiny`)" in capsys.readouterr().err

    assert _run(tmp_path, _spec(tmp_path)) == 0
    runs = _study_runs(uri)
    roles = sorted(r.data.tags["apc.role"] for r in runs)
    assert roles == ["study", "teacher", "trial"]
    study = next(r for r in runs if r.data.tags["apc.role"] == "study")
    assert study.info.status == "FINISHED"
    assert study.info.run_id != killed.info.run_id
    deleted = {r.info.run_id: r for r in _study_runs(uri, deleted=True)}
    assert deleted[killed.info.run_id].info.status == "FAILED"
