"""Studies on a real multi-node Ray cluster on 127.0.0.1 with a real MLflow server, and faults.

One Ray head (no CPUs: trials must go to the workers, as on a GPU cluster whose head only
drives) and two one-CPU worker nodes, started as separate processes by
``ray.cluster_utils.Cluster``; one ``mlflow server`` on 127.0.0.1 over a SQLite store; one
shared local storage path. Three studies run on it, each a separate driver process:

* submitted as a Ray Job (``ray job submit -- apc run``): trials on both nodes, one trial
  that diverges and fails with its reason while the study goes on, and the MLflow server
  stopped and restarted in the middle without losing a result;
* ``apc run --ray-address``, and the worker node of a running trial killed: the trial goes
  on from its checkpoint on the other node, in the same MLflow run, no epoch logged twice;
* ``apc run --ray-address`` with its driver killed (SIGKILL) mid-study, then
  ``apc resume NAME``: finished trials are not run again, the rest finish.

The first runs in the default tier; the two with a killed node or driver take about two
minutes each on 2 cores and are in the ``slow`` tier (``make test-slow``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import ViewType

from tests.study.mlflow_outage import MlflowServer, free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
EPOCHS = 3
SPEC = f"""\
name: cluster
seed: 0
dataset:
  name: shapes
  image_size: 32
  train_size: 96
  val_size: 16
  options: {{num_classes: 3}}
teacher: {{arch: vgg11_bn, width: 8, epochs: 1}}
search_space:
  parameters:
    matching: {{type: categorical, choices: [none, ewa]}}
    beta: {{type: loguniform, low: 0.5, high: 1.0e+38, when: {{matching: [ewa]}}}}
    student_width: {{type: categorical, choices: [1, 2]}}
# grad_clip 0: the DIVERGING trial's beta must blow up its weights, which clipping prevents.
training: {{optimizer: sgd, lr: 0.02, batch_size: 16, grad_clip: 0}}
epochs: {EPOCHS}
trials: 4
max_concurrent: 2
resources_per_trial: {{cpu: 1}}
objectives: {{map: max, params: min}}
"""
# Four distinct settings, so that no repeat is skipped and every study has four trials.
SETTINGS = [
    "{matching: none, student_width: 1}",
    "{matching: ewa, beta: 1.0, student_width: 1}",
    "{matching: none, student_width: 2}",
    "{matching: ewa, beta: 2.0, student_width: 2}",
]
DIVERGING = "{matching: ewa, beta: 1.0e+38, student_width: 1}"


def _wait(
    condition: Callable[[], Any],
    *,
    timeout_s: float,
    what: str,
    process: subprocess.Popen[str] | None = None,
) -> Any:
    """``condition()`` once it is true; fails when ``process`` ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"ended (exit {process.returncode}) before {what}:\n{output}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Setup:
    cluster: Any
    mlflow: MlflowServer
    spec: Path
    storage: Path
    dashboard: str

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow.uri)

    def run_args(self, name: str, enqueue: list[str], *sets: str) -> list[str]:
        return [
            "run",
            str(self.spec),
            "--name",
            name,
            "--tracking-uri",
            self.mlflow.uri,
            "--storage",
            str(self.storage),
            "--set",
            f"enqueue=[{', '.join(enqueue)}]",
            *(arg for assignment in sets for arg in ("--set", assignment)),
        ]

    def trial_runs(self, name: str) -> list[Any]:
        experiment = self.client().get_experiment_by_name(name)
        if experiment is None:
            return []
        return list(
            self.client().search_runs(
                [experiment.experiment_id], filter_string="tags.`apc.role` = 'trial'"
            )
        )


def _job_server_ready(address: str) -> bool:
    """Whether the head's job agent takes submissions (it starts after the dashboard)."""
    from ray.job_submission import JobSubmissionClient

    try:
        JobSubmissionClient(address).submit_job(entrypoint="true")
    except (RuntimeError, ConnectionError):
        return False
    return True


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    mlflow = MlflowServer(root)
    with contextlib.ExitStack() as cleanup:  # a failed start still stops what did start
        cleanup.callback(mlflow.stop)
        mlflow.start()
        dashboard_port = free_port()
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": dashboard_port,
            },
        )
        cleanup.callback(cluster.shutdown)
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        # The job agent starts after the dashboard; on a loaded 2-core machine that took over 2 min.
        _wait(lambda: _job_server_ready(dashboard), timeout_s=300, what="the Ray Jobs server")
        spec = root / "spec.yaml"
        spec.write_text(SPEC)
        yield Setup(cluster, mlflow, spec, root / "results", dashboard)


def _steps(client: Any, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def test_job_submitted_study_spans_nodes_survives_mlflow_outage_and_a_diverged_trial(
    setup: Setup,
) -> None:
    """``ray job submit -- apc run``: the Ray Jobs way into a running cluster."""
    args = setup.run_args("jobs", [DIVERGING, *SETTINGS[:3]])
    job = subprocess.Popen(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            setup.dashboard,
            "--",
            str(BIN / "apc"),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = setup.client()

    def epochs_logged() -> int:
        return sum(len(_steps(client, r.info.run_id, "loss")) for r in setup.trial_runs("jobs"))

    # MLflow goes away once the first results are in, and comes back 10 s later.
    _wait(lambda: epochs_logged() >= 1, timeout_s=240, what="a first logged epoch", process=job)
    setup.mlflow.stop()
    time.sleep(10)
    setup.mlflow.start()
    output, _ = job.communicate(timeout=400)
    assert job.returncode == 0, output
    assert "Job 'raysubmit_" in output
    assert "succeeded" in output
    assert "was unreachable for about" in output  # the driver's log queue waited it out

    runs = setup.trial_runs("jobs")
    assert len(runs) == 4
    (diverged,) = [r for r in runs if float(r.data.params.get("beta", 0)) > 1e30]
    assert diverged.info.status == "FAILED"
    assert diverged.data.tags["apc.failure"].startswith("trainables.loop.DivergedError: loss is")
    others = [r for r in runs if r is not diverged]
    # Two trials run at once and each worker node has one CPU: they ran on both nodes.
    # (The diverged trial's last result can lose the race with its error in Tune, and with
    # it the node tag.)
    nodes = {n for run in runs for n in run.data.tags.get("apc.node_ids", "").split(",") if n}
    assert nodes == {node.node_id for node in setup.cluster.worker_nodes}
    for run in others:
        assert run.info.status == "FINISHED"
        # Every epoch of every trial is in MLflow, the outage notwithstanding.
        assert _steps(client, run.info.run_id, "loss") == list(range(EPOCHS))
        assert _steps(client, run.info.run_id, "map") == list(range(EPOCHS))
        assert not math.isnan(run.data.metrics["map"])
    parent = client.get_run(diverged.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"


def _driver(setup: Setup, name: str, enqueue: list[str], *sets: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "apc"),
            *setup.run_args(name, enqueue, *sets),
            "--ray-address",
            setup.cluster.address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


# ~2 minutes each on 2 cores: the `slow` tier (`make test-slow`), beside the local
# driver-kill tests of test_lifecycle.py and test_durable_tracking.py in the default one.
@pytest.mark.slow
def test_trial_continues_from_its_checkpoint_when_its_node_dies(setup: Setup) -> None:
    # Epochs of a few seconds, so that the kill comes while the trial runs.
    driver = _driver(setup, "nodekill", SETTINGS, "dataset.train_size=480")
    client = setup.client()

    def running_trial_after_one_epoch() -> Any:
        for run in setup.trial_runs("nodekill"):
            logged = len(_steps(client, run.info.run_id, "loss"))
            running = run.info.status == "RUNNING" and "apc.node_ids" in run.data.tags
            if running and 1 <= logged < EPOCHS:
                return run
        return None

    victim = _wait(
        running_trial_after_one_epoch, timeout_s=240, what="a trial after 1 epoch", process=driver
    )
    node_id = victim.data.tags["apc.node_ids"]
    node = next(n for n in setup.cluster.worker_nodes if n.node_id == node_id)
    setup.cluster.remove_node(node, allow_graceful=False)
    setup.cluster.add_node(num_cpus=1)  # a replacement, as an autoscaler would start
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, output

    runs = setup.trial_runs("nodekill")
    assert len(runs) == 4  # one run per trial: none lost, none duplicated
    assert len({r.data.tags["apc.trial_id"] for r in runs}) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        assert _steps(client, run.info.run_id, "loss") == list(range(EPOCHS))
    moved = next(r for r in runs if r.info.run_id == victim.info.run_id)
    assert moved.data.tags["apc.node_ids"].split(",")[0] == node_id
    assert len(moved.data.tags["apc.node_ids"].split(",")) == 2  # it moved to another node


# ~2 minutes each on 2 cores: the `slow` tier (`make test-slow`), beside the local
# driver-kill tests of test_lifecycle.py and test_durable_tracking.py in the default one.
@pytest.mark.slow
def test_killed_driver_is_resumed_without_repeating_finished_trials(setup: Setup) -> None:
    # Epochs of a second or more: Tune snapshots the experiment every second (runner).
    driver = _driver(setup, "resumed", SETTINGS, "dataset.train_size=480")
    client = setup.client()
    finished = _wait(
        lambda: [r for r in setup.trial_runs("resumed") if r.info.status == "FINISHED"],
        timeout_s=300,
        what="a finished trial",
        process=driver,
    )
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    before = {r.data.tags["apc.trial_id"]: r for r in setup.trial_runs("resumed")}
    assert len(before) < 4 or any(r.info.status == "RUNNING" for r in before.values())
    ended = {r.info.run_id: r.info.end_time for r in finished}

    resumed = subprocess.run(
        [str(BIN / "apc"), "resume", "resumed", "--tracking-uri", setup.mlflow.uri],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = setup.trial_runs("resumed")
    assert len(runs) == 4
    assert len({r.data.tags["apc.trial_id"] for r in runs}) == 4
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("apc.failure")
        steps = _steps(client, run.info.run_id, "loss")
        if run.info.run_id in ended and steps == list(range(EPOCHS)):
            # finished before the kill and in Tune's last snapshot: not run again
            assert run.info.end_time == ended[run.info.run_id]
            continue
        # A trial running at the kill goes on from the checkpoint in Tune's last snapshot of
        # the experiment, which can lag its newest epoch: epochs after it run again, the run
        # says which.
        assert sorted(set(steps)) == list(range(EPOCHS))
        repeated = sorted({s for s in steps if steps.count(s) > 1})
        if repeated:
            tag = run.data.tags["apc.repeated_epochs"]
            assert tag.startswith(",".join(map(str, repeated)) + " (re-run after a resume")
        else:
            assert "apc.repeated_epochs" not in run.data.tags
    assert "Pareto front" in resumed.stdout
    # A trial started after Tune's last snapshot (if the kill came in time to leave one):
    # Tune ran its place again, and its run is deleted, tagged as such.
    orphans = setup.client().search_runs(
        [runs[0].info.experiment_id],
        filter_string="tags.`apc.role` = 'trial'",
        run_view_type=ViewType.DELETED_ONLY,
    )
    for run in orphans:
        assert run.data.tags["apc.orphaned"].startswith("started after Tune's last snapshot")
        assert run.data.tags["apc.trial_id"] not in {r.data.tags["apc.trial_id"] for r in runs}
    again = subprocess.run(
        [str(BIN / "apc"), "resume", "resumed", "--tracking-uri", setup.mlflow.uri],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2
    assert "is finished" in again.stderr


def test_mlflow_ui_serves_the_study_runs_metrics_and_report_images(setup: Setup) -> None:
    """What the MLflow UI shows, asked through the same server's REST API (the UI's own
    calls): the nested runs, a metric's history, and the report's plots as PNG. Uses the study
    the Ray Job ran (this module's tests run in order; its diverged trial FAILED)."""
    import requests

    base = setup.mlflow.uri
    page = requests.get(f"{base}/", timeout=30)
    assert page.ok
    assert "<title>MLflow</title>" in page.text
    report = subprocess.run(
        [str(BIN / "apc"), "report", "jobs", "--tracking-uri", base],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stdout + report.stderr

    api = f"{base}/api/2.0/mlflow"
    experiment = requests.get(
        f"{api}/experiments/get-by-name", params={"experiment_name": "jobs"}, timeout=30
    ).json()["experiment"]
    runs = requests.post(
        f"{api}/runs/search", json={"experiment_ids": [experiment["experiment_id"]]}, timeout=30
    ).json()["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    (parent,) = [run for run, tag in zip(runs, tags, strict=True) if tag["apc.role"] == "study"]
    parent_id = parent["info"]["run_id"]
    trials = [run for run, tag in zip(runs, tags, strict=True) if tag["apc.role"] == "trial"]
    assert len(trials) == 4
    for tag in tags:
        if tag["apc.role"] != "study":
            assert tag["mlflow.parentRunId"] == parent_id  # nested under the study in the UI
    finished = [run for run in trials if run["info"]["status"] == "FINISHED"]
    assert len(finished) == 3
    history = requests.get(
        f"{api}/metrics/get-history",
        params={"run_id": finished[0]["info"]["run_id"], "metric_key": "map"},
        timeout=30,
    ).json()["metrics"]
    assert sorted(point["step"] for point in history) == list(range(EPOCHS))

    listed = requests.get(
        f"{api}/artifacts/list", params={"run_id": parent_id, "path": "report"}, timeout=30
    ).json()["files"]
    images = [f["path"] for f in listed if f["path"].endswith(".png")]
    assert "report/pareto_matrix.png" in images
    for path in images:
        served = requests.get(
            f"{base}/get-artifact", params={"path": path, "run_uuid": parent_id}, timeout=30
        )
        assert served.ok
        assert served.content.startswith(b"\x89PNG\r\n\x1a\n")
