"""After a real `apc run` against a real `mlflow server`: the search `tags.apc.pareto = "true"`
lists exactly the front `apc pareto` prints, the study run describes it and holds the plots,
`apc report` logs an HTML page with its tables and plots inline, and the front's models are
registered versions that load with the two lines of docs/design.md."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html import escape as html_escape
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient

from analysis.layout import (
    MODEL_ARTIFACT,
    MODEL_RUN_TAG,
    NOTE_TAG,
    PARETO_RANK_TAG,
    PARETO_TAG,
    finished_trials_filter,
)
from study.cli import main
from tests.study.conftest import tiny_run_args
from tests.study.mlflow_outage import MlflowServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: The study's name: docs/design.md's example loads version 1 of `demo-distillation`.
NAME = "demo"
MODEL = "demo-distillation"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("front_registry")
    server = MlflowServer(root)
    server.start()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main(
                tiny_run_args(
                    NAME,
                    server.uri,
                    root / "results",
                    "registry=true",
                    "enqueue=[{matching: none, student_width: 2}, "
                    "{matching: swa, beta: 1.0, student_width: 4}]",
                )
            )
        assert code == 0, out.getvalue()
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name(NAME)
        assert experiment is not None
        (parent,) = client.search_runs(
            [experiment.experiment_id], filter_string="tags.`apc.role` = 'study'"
        )
        yield {
            "uri": server.uri,
            "root": root,
            "out": out.getvalue(),
            "client": client,
            "experiment_id": experiment.experiment_id,
            "parent": parent.info.run_id,
        }
    finally:
        server.stop()


def _printed_front(uri: str, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    capsys.readouterr()
    assert main(["pareto", NAME, "--tracking-uri", uri, "--format", "csv", *args]) == 0
    return [row["run_id"] for row in csv.DictReader(io.StringIO(capsys.readouterr().out))]


def _ui_search(served: dict[str, Any], filter_string: str) -> list[dict[str, Any]]:
    """The runs the UI's search box finds: the REST call the UI makes."""
    response = requests.post(
        f"{served['uri']}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [served["experiment_id"]], "filter": filter_string},
        timeout=30,
    )
    response.raise_for_status()
    runs: list[dict[str, Any]] = response.json().get("runs", [])
    return runs


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_the_ui_search_lists_exactly_the_front_apc_pareto_prints(
    served: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # What `apc run` printed, and `apc pareto` with the study run's FINISHED trials (here every
    # trial: one study run, all FINISHED, so plain `apc pareto NAME` agrees too).
    front = _printed_front(
        served["uri"], capsys, "--filter", finished_trials_filter(served["parent"])
    )
    assert front == _printed_front(served["uri"], capsys)
    assert front
    found = _ui_search(served, 'tags.apc.pareto = "true"')
    ranked = sorted(found, key=lambda run: int(_tags(run)[PARETO_RANK_TAG]))
    assert [run["info"]["run_id"] for run in ranked] == front
    off = _ui_search(served, 'tags.apc.pareto = "false"')
    trials = _ui_search(served, "tags.`apc.role` = 'trial'")
    assert len(off) + len(found) == len(trials) == 3
    assert all(PARETO_RANK_TAG not in _tags(run) for run in off)


def test_the_study_run_describes_the_front_and_holds_the_plots(served: dict[str, Any]) -> None:
    client: MlflowClient = served["client"]
    note = client.get_run(served["parent"]).data.tags[NOTE_TAG]
    assert "Pareto front over map:max,attr_auc:max,params:min" in note
    assert f"`{finished_trials_filter(served['parent'])}`" in note
    assert '    tags.apc.pareto = "true"' in note.splitlines()
    logged = {a.path for a in client.list_artifacts(served["parent"], "report")}
    assert {"report/pareto_matrix.png", "report/hypervolume.png"} <= logged


def test_apc_report_logs_an_html_page_with_its_tables_and_plots_inline(
    served: dict[str, Any], tmp_path: Path
) -> None:
    assert main(["report", NAME, "--tracking-uri", served["uri"], "--out", str(tmp_path)]) == 0
    client: MlflowClient = served["client"]
    page = Path(client.download_artifacts(served["parent"], "report/report.html", str(tmp_path)))
    html = page.read_text("utf-8")
    assert html == (tmp_path / "report.html").read_text("utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "<th>method</th><th>row</th>" in html
    # Every body cell of report.md's tables is a cell of the page (the rows are the teacher's
    # and the trials', however many matching kinds the study has).
    body = [
        line
        for line in (tmp_path / "report.md").read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    ]
    assert len(body) >= 2  # at least the teacher and one trial row
    for line in body:
        for cell in line.strip("| ").split(" | "):
            assert re.search(rf"<td( class=\"num\")?>{re.escape(html_escape(cell))}</td>", html), (
                cell
            )
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', html)
    assert len(images) >= 3  # Pareto matrix, hypervolume, metrics against beta
    assert 'src="pareto_matrix.png"' not in html


def _doc_lines() -> str:
    text = (ROOT / "docs/design.md").read_text()
    section = text[text.index("### Registered front models") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    lines = block.group(1)
    assert len([line for line in lines.splitlines() if line.strip()]) == 2
    return lines


def test_front_models_are_registered_and_load_with_the_documented_two_lines(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import torch

    client: MlflowClient = served["client"]
    front = _printed_front(served["uri"], capsys)
    versions = sorted(
        client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version)
    )
    assert [v.run_id for v in versions] == front  # in the front's order
    first = versions[0]
    assert first.tags[MODEL_RUN_TAG] == front[0]
    assert first.tags[PARETO_RANK_TAG] == "1"
    run = client.get_run(front[0])
    for metric in ("map", "attr_auc", "params", "model_bytes"):
        assert float(first.tags[metric]) == run.data.metrics[metric]
    assert first.tags["matching"] == run.data.params["matching"]
    assert run.data.tags[PARETO_TAG] == "true"
    assert str(first.source).startswith("models:/")  # the logged model, by id
    logged = client.get_logged_model(str(first.source).removeprefix("models:/"))
    assert logged.source_run_id == front[0]
    assert logged.params["matching"] == run.data.params["matching"]

    # The two lines, as the doc has them, in a fresh interpreter that may not unpickle.
    script = tmp_path / "load.py"
    script.write_text(
        _doc_lines()
        + "import sys, torch\n"
        + "torch.manual_seed(0)\n"
        + "images = torch.randn(3, 3, 32, 32)\n"
        + "torch.save(model(images).detach(), sys.argv[1])\n"
    )
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": served["uri"],
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out.pt")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    original = torch.export.load(
        client.download_artifacts(front[0], MODEL_ARTIFACT, str(tmp_path))
    ).module()
    torch.manual_seed(0)
    expected = original(torch.randn(3, 3, 32, 32)).detach()
    np.testing.assert_allclose(loaded.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_register_again_adds_nothing_and_bad_input_writes_nothing(
    served: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    client: MlflowClient = served["client"]
    before = len(client.search_model_versions(f"name = '{MODEL}'"))
    capsys.readouterr()
    assert main(["register", NAME, "--tracking-uri", served["uri"]]) == 0
    out = capsys.readouterr().out
    assert f"registered model '{MODEL}': {before} front trials of study '{NAME}'" in out
    assert "; 0 new versions" in out
    assert out.count("(registered before)") == before
    bad = [
        (["--objectives", "mapp:max"], "apc register: --objectives: unknown metric 'mapp'"),
        (["--filter", "params.matching == 'swa' OR"], "apc register: --filter "),
        (["--objectives", "top1:max"], "apc register: --objectives: metric 'top1' was logged"),
    ]
    for args, message in bad:
        assert main(["register", NAME, "--tracking-uri", served["uri"], *args]) == 2
        out, err = capsys.readouterr()
        assert err.startswith(message), err
        assert len(err.strip().splitlines()) == 1
    assert main(["register", "nope", "--tracking-uri", served["uri"]]) == 2
    assert "apc register: study 'nope': no such experiment" in capsys.readouterr().err
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == before
    assert [m.name for m in client.search_registered_models()] == [MODEL]
