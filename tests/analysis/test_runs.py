from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest

from analysis import runs as runs_module
from analysis.runs import (
    BadFilterError,
    RunsQueryError,
    TrackingStoreError,
    UnknownStudyError,
    load_trials,
    metric_columns,
    param_columns,
)
from tests.analysis.mlflow_study import (
    DELETED,
    OTHER,
    STUDY,
    T0,
    TRIALS,
    StudyStore,
    shared_store,
)

pytestmark = pytest.mark.integration

PARAMS = ["beta", "drop_p", "matching", "method", "schedule", "student_width", "teacher_run_id"]
METRICS = ["attr_auc", "attr_cos", "map", "params"]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> StudyStore:
    return shared_store(tmp_path_factory)


def test_one_row_per_trial_run_with_params_and_final_metrics(store: StudyStore) -> None:
    table = load_trials(store.uri, STUDY)
    assert table.column_names == ["run_id", "trial", "status", *PARAMS, *METRICS]
    assert param_columns(table) == PARAMS
    assert metric_columns(table) == METRICS
    # Trials only (no parent, no teacher, no deleted run), in start order.
    assert table.column("trial").to_pylist() == [t.name for t in TRIALS]
    assert table.column("run_id").to_pylist() == [store.trial_run_ids[t.name] for t in TRIALS]
    assert store.deleted_run_id not in table.column("run_id").to_pylist()
    assert table.column("status").to_pylist() == [t.status for t in TRIALS]
    types = {name: table.schema.field(name).type for name in PARAMS}
    assert types == {
        "beta": pa.float64(),
        "drop_p": pa.float64(),
        "matching": pa.string(),
        "method": pa.string(),
        "schedule": pa.string(),  # "1" and "cosine": not all numbers
        "student_width": pa.float64(),
        "teacher_run_id": pa.string(),
    }
    assert all(table.schema.field(name).type == pa.float64() for name in METRICS)
    for row, trial in zip(table.to_pylist(), TRIALS, strict=True):
        for name in PARAMS[:-1]:
            given = trial.params.get(name)
            if given is None:
                assert row[name] is None, (trial.name, name)
            else:
                wanted = given if table.schema.field(name).type == pa.string() else float(given)
                assert row[name] == wanted, (trial.name, name)
        assert row["teacher_run_id"] == store.teacher_run_id
        for name in METRICS:  # the last epoch's value, not the best one (epoch 1 is higher)
            final = trial.final.get(name)
            if final is None:
                assert row[name] is None, (trial.name, name)
            elif math.isnan(final):
                assert math.isnan(row[name]), (trial.name, name)
            else:
                assert row[name] == final, (trial.name, name)


def test_beta_is_absent_where_matching_is_none(store: StudyStore) -> None:
    table = load_trials(store.uri, STUDY)
    rows = {row["trial"]: row for row in table.to_pylist()}
    assert rows["distill_3f2a_00000"]["matching"] == "none"
    assert rows["distill_3f2a_00000"]["beta"] is None
    assert rows["distill_3f2a_00007"]["beta"] == 0.1  # written "1e-1"


@pytest.mark.parametrize(
    ("filter_string", "trials"),
    [
        ("params.matching = 'swa'", [2, 4, 7, 8]),
        ('params.matching = "sswa"', [3, 5]),
        ("metrics.map > 62", [3, 4, 7, 8]),  # the final map, not the best epoch's
        ("metrics.map >= 62 AND params.student_width = '4'", [1, 2]),
        ("attributes.status = 'FAILED'", [7]),
        ("attributes.run_name LIKE '%0000_'", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("params.matching = 'kd'", []),
        ("  ", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
    ],
)
def test_filter_expressions_are_anded_to_the_trial_filter(
    store: StudyStore, filter_string: str, trials: list[int]
) -> None:
    table = load_trials(store.uri, STUDY, filter_string=filter_string)
    assert table.column("trial").to_pylist() == [TRIALS[i].name for i in trials]


def test_no_matching_trials_give_an_empty_table_with_the_run_columns(store: StudyStore) -> None:
    for table in (
        load_trials(store.uri, OTHER),  # a study with a parent run only
        load_trials(store.uri, STUDY, filter_string="params.matching = 'kd'"),
    ):
        assert table.num_rows == 0
        assert table.column_names == ["run_id", "trial", "status"]


def test_pages_are_all_read(store: StudyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = load_trials(store.uri, STUDY)
    monkeypatch.setattr(runs_module, "PAGE_SIZE", 2)
    paged = load_trials(store.uri, STUDY)
    assert paged.schema.equals(whole.schema, check_metadata=True)
    assert repr(paged.to_pylist()) == repr(whole.to_pylist())  # repr: NaN == NaN


def test_unknown_study_names_the_store_and_the_known_studies(store: StudyStore) -> None:
    with pytest.raises(UnknownStudyError) as raised:
        load_trials(store.uri, "attr_stduy")
    assert str(raised.value) == (
        f"study 'attr_stduy': no such experiment in {store.uri}; known: {STUDY}, {OTHER}"
    )
    assert isinstance(raised.value, ValueError)


def test_deleted_study_says_how_to_restore_it(store: StudyStore) -> None:
    with pytest.raises(
        UnknownStudyError,
        match=r"study 'deleted_study': its experiment \(id \d+\) is deleted in .*mlflow experiments restore --experiment-id \d+",
    ):
        load_trials(store.uri, DELETED)


@pytest.mark.parametrize(
    ("filter_string", "reason"),
    [
        (
            "params.matching = swa",
            "Parameter value is either not quoted or unidentified quote types used for string value swa. Use either single or double quotes.",
        ),
        ("metrics.map > 'a'", "Expected numeric value type for metric. Found 'a'"),
        ("params.beta > 1", "Expected a quoted string value for parameter"),
        ("foo.bar = 'x'", "Invalid entity type 'foo'"),
        (
            "params.matching = 'swa' OR params.matching = 'ewa'",
            "Invalid clause(s) in filter string",
        ),
    ],
)
def test_bad_filters_raise_with_mlflows_reason(
    store: StudyStore, filter_string: str, reason: str
) -> None:
    with pytest.raises(BadFilterError) as raised:
        load_trials(store.uri, STUDY, filter_string=filter_string)
    assert raised.value.filter_string == filter_string
    assert reason in raised.value.reason
    assert str(raised.value).startswith(f"filter {filter_string!r}: ")
    assert isinstance(raised.value, ValueError)


def test_a_missing_local_store_is_reported_and_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for uri, path in [
        (f"sqlite:///{tmp_path}/nothing.db", tmp_path / "nothing.db"),
        ("sqlite:///relative.db", tmp_path / "relative.db"),
        (str(tmp_path / "mlruns"), tmp_path / "mlruns"),
        ((tmp_path / "mlruns").as_uri(), tmp_path / "mlruns"),
    ]:
        with pytest.raises(TrackingStoreError) as raised:
            load_trials(uri, STUDY)
        assert (
            str(raised.value)
            == f"tracking URI {uri!r}: no MLflow store there ({path} does not exist)"
        )
    assert list(tmp_path.iterdir()) == []


def test_an_unusable_tracking_uri_is_a_store_error() -> None:
    with pytest.raises(TrackingStoreError, match=r"^tracking URI 'foo://bar': \S"):
        load_trials("foo://bar", STUDY)
    assert issubclass(TrackingStoreError, RunsQueryError)


def test_name_clashes_are_prefixed_and_numbers_parse(tmp_path: Path) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/clash.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("clash", artifact_location=(tmp_path / "a").as_uri())
    values = [("1", "3", "x1", "nan"), ("2.5", "1_000", "7", "-inf")]
    for i, (number, underscore, mixed, special) in enumerate(values):
        run = client.create_run(
            experiment, start_time=T0 + i, tags={"apc.role": "trial"}, run_name=f"t{i}"
        )
        params = {
            "map": "p",
            "status": "s",
            "n": number,
            "u": underscore,
            "mixed": mixed,
            "special": special,
        }
        client.log_batch(
            run.info.run_id,
            params=[Param(k, v) for k, v in params.items()],
            metrics=[Metric("map", 1.0 + i, 0, 0), Metric("trial", 5.0, 0, 0)],
        )
    table = load_trials(uri, "clash")
    assert table.column_names == [
        "run_id",
        "trial",
        "status",
        "params.map",
        "mixed",
        "n",
        "special",
        "params.status",
        "u",
        "map",
        "metrics.trial",
    ]
    assert table.column("trial").to_pylist() == ["t0", "t1"]
    assert table.column("n").to_pylist() == [1.0, 2.5]
    assert table.column("u").to_pylist() == ["3", "1_000"]
    assert table.column("mixed").to_pylist() == ["x1", "7"]
    assert table.column("special").type == pa.float64()
    assert param_columns(table) == ["params.map", "mixed", "n", "special", "params.status", "u"]
    assert metric_columns(table) == ["map", "metrics.trial"]
    field = table.schema.field("params.map")
    assert field.metadata == {b"apc.kind": b"param", b"apc.name": b"map"}


def test_trials_of_one_parent_run_by_its_tag(store: StudyStore) -> None:
    """A study run twice under one name has two parent runs; the nesting tag tells them apart."""
    mine = load_trials(
        store.uri, STUDY, filter_string=f"tags.mlflow.parentRunId = '{store.parent_run_id}'"
    )
    assert mine.num_rows == len(TRIALS)
    quoted = f"tags.\"mlflow.parentRunId\" = '{store.parent_run_id}'"
    assert load_trials(store.uri, STUDY, filter_string=quoted).num_rows == len(TRIALS)
    assert (
        load_trials(store.uri, STUDY, filter_string="tags.mlflow.parentRunId = 'x'").num_rows == 0
    )
