"""pareto_front and pareto_mask over what a notebook holds: the DataFrame of
``mlflow.search_runs`` (``metrics.`` / ``params.`` columns) and any ``__arrow_c_stream__``
object, against the Arrow path (``analysis.runs.load_trials``) and a brute-force front, on a
real SQLite store; and the notebook example of docs/design.md, run as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analysis.layout import TRIAL_FILTER
from analysis.pareto import ObjectivesError, pareto_front, pareto_mask
from analysis.runs import load_trials
from tests.analysis.mlflow_study import STUDY, StudyStore, expected_front, shared_store

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVE_SETS: list[dict[str, Any]] = [
    {"map": "max", "attr_auc": "max", "params": "min"},
    {"map": "max", "params": "min"},
    {"attr_cos": "max", "params": "min"},
    {"map": "min"},
]


class Stream:
    """Only the Arrow PyCapsule stream interface over a table (as polars or DuckDB offer)."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self._table.__arrow_c_stream__(requested_schema)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StudyStore:
    return shared_store(tmp_path_factory)


def _search_runs(store: StudyStore) -> pd.DataFrame:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store.uri)
    try:
        runs = mlflow.search_runs(experiment_names=[STUDY], filter_string=TRIAL_FILTER)
    finally:
        mlflow.set_tracking_uri(previous)
    assert isinstance(runs, pd.DataFrame)
    return runs


@pytest.mark.parametrize("objectives", OBJECTIVE_SETS)
def test_search_runs_gives_the_arrow_paths_front(
    store: StudyStore, objectives: dict[str, Any]
) -> None:
    runs = _search_runs(store).set_index(pd.Index(range(100, 100 + 9), name="row"))
    front = pareto_front(runs, objectives)
    # The same kind back: every column, the original index, the rows in their order.
    assert isinstance(front, pd.DataFrame)
    assert list(front.columns) == list(runs.columns)
    assert front.index.name == "row"
    assert list(front.index) == [i for i in runs.index if i in set(front.index)]
    pd.testing.assert_frame_equal(front, runs.loc[front.index])
    arrow = pareto_front(load_trials(store.uri, STUDY), objectives)
    assert isinstance(arrow, pa.Table)
    assert sorted(front["run_id"]) == sorted(arrow.column("run_id").to_pylist())
    names = {store.trial_run_ids[n]: n for n in store.trial_run_ids}
    assert {names[r] for r in front["run_id"]} == expected_front(objectives)
    mask = pareto_mask(runs, objectives)
    assert isinstance(mask, pd.Series)
    assert mask.dtype == bool
    assert list(mask.index) == list(runs.index)
    assert runs[mask].equals(front)


@pytest.mark.parametrize("objectives", OBJECTIVE_SETS)
def test_an_arrow_stream_gives_an_arrow_table(
    store: StudyStore, objectives: dict[str, Any]
) -> None:
    table = load_trials(store.uri, STUDY)
    front = pareto_front(Stream(table), objectives)
    assert isinstance(front, pa.Table)
    expected = pareto_front(table, objectives)
    assert front.schema.equals(expected.schema, check_metadata=True)
    assert front.to_pandas().equals(expected.to_pandas())  # NaN where NaN (Arrow: NaN != NaN)
    mask = pareto_mask(Stream(table), objectives)
    assert isinstance(mask, np.ndarray)
    assert mask.tolist() == pareto_mask(table, objectives).tolist()
    # search_runs' column names through a stream: the prefixes are understood there too.
    runs = pa.Table.from_pandas(_search_runs(store)[["run_id", *_metric_columns(store)]])
    assert sorted(pareto_front(Stream(runs), objectives).column("run_id").to_pylist()) == sorted(
        front.column("run_id").to_pylist()
    )


def _metric_columns(store: StudyStore) -> list[str]:
    return [c for c in _search_runs(store).columns if c.startswith("metrics.")]


def test_a_bare_name_wins_and_params_strings_are_numbers() -> None:
    frame = pd.DataFrame(
        {
            "map": [1.0, 2.0, 3.0],
            "metrics.map": [3.0, 2.0, 1.0],
            "params.beta": ["0.5", "2", None],
            "metrics.params": [10, 10, 10],
        },
        index=["a", "b", "c"],
    )
    assert list(pareto_front(frame, {"map": "max"}).index) == ["c"]
    assert list(pareto_front(frame, {"metrics.map": "max"}).index) == ["a"]
    # A param is a string in MLflow; as an objective it is its number (a missing one: off).
    assert list(pareto_front(frame, {"beta": "max"}).index) == ["b"]
    # A frame without pandas' NaN-able dtypes and nulls: object columns of floats.
    assert list(pareto_front(frame.astype(object), {"map": "max"}).index) == ["c"]


@pytest.mark.parametrize(
    ("objectives", "message"),
    [
        (
            {"loss": "min"},
            "objectives.loss: no column 'loss' and 2 prefixed ones "
            "('metrics.loss', 'params.loss'); name the one meant",
        ),
        ({"tag": "max"}, "objectives.params.tag: must hold numbers, got 'swa'"),
        (
            {"note": "max"},
            "objectives: unknown column 'note' (columns: metrics.loss, params.loss, "
            "params.tag, tags.x)",
        ),
        ({"tags.x": "max"}, "objectives.tags.x: must be a numeric column, got string"),
    ],
)
def test_what_a_name_cannot_mean_is_said(objectives: dict[str, Any], message: str) -> None:
    frame = pd.DataFrame(
        {
            "metrics.loss": [1.0],
            "params.loss": ["2"],
            "params.tag": ["swa"],
            "tags.x": ["{}"],
        }
    )
    for table in (
        frame,
        pa.table(
            {"metrics.loss": [1.0], "params.loss": ["2"], "params.tag": ["swa"], "tags.x": ["{}"]}
        ),
    ):
        with pytest.raises(ObjectivesError) as raised:
            pareto_front(table, objectives)
        # pandas 3 holds strings as Arrow's large_string.
        assert str(raised.value).replace("large_string", "string") == message


def test_anything_else_is_a_type_error() -> None:
    with pytest.raises(
        TypeError,
        match=r"^table: must be a pyarrow Table, a pandas DataFrame "
        r"or an object with __arrow_c_stream__, got builtins\.list$",
    ):
        pareto_front([{"map": 1.0}], {"map": "max"})


def notebook_example() -> str:
    """The fenced Python block of docs/design.md that calls ``mlflow.search_runs``."""
    text = (ROOT / "docs/design.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    (block,) = [b for b in blocks if "mlflow.search_runs" in b]
    return str(block)


def test_the_notebook_example_in_the_docs_runs_as_written(
    store: StudyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    # The example reads ./mlflow.db and the study "demo": a copy of the test store, renamed.
    shutil.copyfile(store.db, tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None
    client.rename_experiment(experiment.experiment_id, "demo")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt
    import mlflow

    previous = mlflow.get_tracking_uri()
    namespace: dict[str, Any] = {}
    try:
        exec(compile(notebook_example(), "docs/design.md", "exec"), namespace)
    finally:
        mlflow.set_tracking_uri(previous)
        plt.close("all")
    front = namespace["front"]
    objectives = namespace["objectives"]
    assert isinstance(front, pd.DataFrame)
    names = {store.trial_run_ids[n]: n for n in store.trial_run_ids}
    assert {names[r] for r in front["run_id"]} == expected_front(objectives)
    assert (tmp_path / "pareto.png").read_bytes().startswith(b"\x89PNG")
