"""`apc ui`: links that open each study on its runs, and a server that ends as a whole.

MLflow 3.17's UI is checked where it decides: its JavaScript bundle (the routes and the query
the links use), and a real `apc ui` subprocess over a real SQLite store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from analysis.layout import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    ROLE_TAG,
    STUDY_ROLE,
    ui_runs_url,
)
from study.cli.ui import group_members, study_links

APC = (sys.executable, "-m", "study.cli")


def _bundle() -> str:
    import mlflow

    folder = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    return "".join(path.read_text("utf-8", "replace") for path in folder.glob("*.js"))


def test_the_link_is_a_route_of_the_installed_ui() -> None:
    bundle = _bundle()
    url = ui_runs_url("http://127.0.0.1:5000/", "7")
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    # A hash router, a route /experiments/:experimentId/:tabName and "runs" a tab name.
    assert "createHashRouter" in bundle
    assert '"/experiments/:experimentId/:tabName"' in bundle
    assert 'e.Runs="runs"' in bundle
    # The workflow type is read from the query first, "machine_learning" one of its values;
    # without it the UI falls back to the browser's choice, at first "genai".
    assert 'get("workflowType")' in bundle
    assert 'MACHINE_LEARNING="machine_learning"' in bundle
    assert 'key:"mlflow.workflowType",version:1,initialValue:c' in bundle
    # The experiment-kind tag and its model-training value, as the UI's selector writes them.
    assert f'key:"{EXPERIMENT_KIND_TAG}"' in bundle
    assert f'CUSTOM_MODEL_DEVELOPMENT="{MODEL_TRAINING_KIND}"' in bundle


@pytest.fixture
def store(tmp_path: Path) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    for name in ("zeta", "alpha"):
        experiment = client.create_experiment(name)
        client.create_run(experiment, run_name=name, tags={ROLE_TAG: STUDY_ROLE})
    client.create_experiment("not-a-study")
    return uri


def test_links_name_every_study_by_name_or_the_ones_asked_for(store: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    ids = {name: client.get_experiment_by_name(name).experiment_id for name in ("alpha", "zeta")}
    server = "http://127.0.0.1:5000"
    assert study_links(store, server) == [
        ("alpha", ui_runs_url(server, ids["alpha"])),
        ("zeta", ui_runs_url(server, ids["zeta"])),
    ]
    assert study_links(store, server, names=["zeta"]) == [
        ("zeta", ui_runs_url(server, ids["zeta"]))
    ]
    with pytest.raises(LookupError, match=f"^nope: no such study in {store}$"):
        study_links(store, server, names=["nope"])


def test_an_unknown_study_exits_2_before_anything_serves(store: str) -> None:
    from study.cli import main

    assert main(["ui", "nope", "--tracking-uri", store, "--port", "1"]) == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.integration
@pytest.mark.parametrize(
    ("sig", "code"),
    # One server start takes about a minute on 2 cores: SIGINT's case in the slow tier.
    [(signal.SIGTERM, 0), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
)
def test_a_signal_ends_the_servers_whole_process_group(
    store: str, sig: signal.Signals, code: int
) -> None:
    port = _free_port()
    ui = subprocess.Popen(
        [*APC, "ui", "alpha", "--port", str(port), "--tracking-uri", store],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # the test's own cleanup: apc ui's group, not pytest's
    )
    pgid = 0
    try:
        assert ui.stderr is not None
        assert ui.stderr.readline() == f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C stops it)\n"
        link = ui.stderr.readline()
        assert link.startswith(f"  study 'alpha', its runs: http://127.0.0.1:{port}/#/experiments/")
        assert link.endswith("/runs?workflowType=machine_learning\n")
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200
                    break
            except OSError:
                assert ui.poll() is None, "apc ui ended before its server answered"
                assert time.monotonic() < deadline, "the MLflow UI never answered"
                time.sleep(0.5)
        # The server's processes: a group of their own, more than one (CLI, uvicorn).
        server = _children(ui.pid)
        assert server
        pgid = os.getpgid(server[0])
        assert pgid != os.getpgid(ui.pid)
        assert len(group_members(pgid)) >= 2
        ui.send_signal(sig)
        assert ui.wait(timeout=60) == code
        assert group_members(pgid) == []
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        if pgid and group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found
