from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from study.cli import main
from tests.analysis.mlflow_study import (
    OTHER,
    STUDY,
    TRIALS,
    StudyStore,
    expected_front,
    shared_store,
)

pytestmark = pytest.mark.integration

DEFAULT = {"map": "max", "attr_auc": "max", "params": "min"}
PARAMS = ["beta", "drop_p", "matching", "method", "schedule", "student_width", "teacher_run_id"]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> StudyStore:
    return shared_store(tmp_path_factory)


@pytest.fixture(autouse=True)
def _in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command runs in an empty directory, so a stray file (mlflow.db, mlruns) shows."""
    monkeypatch.chdir(tmp_path)


def pareto(store: StudyStore, *args: str) -> list[str]:
    return ["pareto", STUDY, "--tracking-uri", store.uri, *args]


def ranked(objectives: dict[str, str], names: set[str]) -> list[str]:
    """The trials ``names`` in the order the CLI gives: each objective best first, then name."""
    final = {t.name: t.final for t in TRIALS}

    def key(name: str) -> tuple[object, ...]:
        return (
            *(-final[name][m] if d == "max" else final[name][m] for m, d in objectives.items()),
            name,
        )

    return sorted(names, key=key)


def test_table_lists_the_front_best_first_with_objectives_then_params(
    store: StudyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(pareto(store)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    front = expected_front(DEFAULT)
    assert lines[0] == (
        f"{len(front)} of {len(TRIALS)} trials of study '{STUDY}' on the Pareto front of "
        "map:max, attr_auc:max, params:min"
    )
    assert lines[1].split() == ["trial", "map", "attr_auc", "params", *PARAMS]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ranked(DEFAULT, front)
    assert rows[0] == [
        "distill_3f2a_00003",
        "65",
        "71",
        "4000",
        "2",
        "0.1",
        "sswa",
        "distillation",
        "1",
        "8",
        store.teacher_run_id,
    ]
    assert rows[1][:7] == ["distill_3f2a_00001", "62", "72", "1000", "1", "-", "ewa"]
    # Aligned: every column starts at the same offset on every line.
    header = lines[1]
    starts = [header.index(name) for name in ("map", "matching", "teacher_run_id")]
    for line in lines[2:]:
        assert line[starts[1] - 2 : starts[1]] == "  "
        assert line[starts[2] :].strip() == store.teacher_run_id


@pytest.mark.parametrize(
    "objectives",
    [
        {"map": "max", "params": "min"},
        {"attr_cos": "max", "params": "min"},
        {"map": "max"},
        {"params": "max", "attr_auc": "min", "map": "min", "attr_cos": "max"},
    ],
)
def test_csv_is_exactly_the_brute_force_front(
    store: StudyStore, capsys: pytest.CaptureFixture[str], objectives: dict[str, str]
) -> None:
    spec = ",".join(f"{m}:{d}" for m, d in objectives.items())
    assert main(pareto(store, "--objectives", spec, "--format", "csv")) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    front = expected_front(objectives)
    assert [row["trial"] for row in rows] == ranked(objectives, front)
    final = {t.name: t.final for t in TRIALS}
    for row in rows:
        for metric in objectives:
            assert float(row[metric]) == final[row["trial"]][metric]
        assert row["run_id"] == store.trial_run_ids[row["trial"]]


def test_csv_columns_and_empty_cells(store: StudyStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(pareto(store, "--format", "csv")) == 0
    text = capsys.readouterr().out
    header, *_ = text.splitlines()
    assert header.split(",") == [
        "trial",
        "run_id",
        "status",
        "map",
        "attr_auc",
        "params",
        *PARAMS,
        "attr_cos",
    ]
    rows = {row["trial"]: row for row in csv.DictReader(io.StringIO(text))}
    assert rows["distill_3f2a_00001"]["drop_p"] == ""
    assert rows["distill_3f2a_00001"]["beta"] == "1.0"
    assert rows["distill_3f2a_00003"]["attr_cos"] == "0.7"


def test_json_parses_back_to_the_front(
    store: StudyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    objectives = {"map": "max", "params": "min"}
    assert main(pareto(store, "--objectives", "map,params", "--format", "json")) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in records] == ranked(objectives, expected_front(objectives))
    by_trial = {r["trial"]: r for r in records}
    # trial 8 is on this front; its attr_auc is NaN, which JSON writes as null.
    assert by_trial["distill_3f2a_00008"]["attr_auc"] is None
    assert by_trial["distill_3f2a_00008"]["map"] == 70.0
    assert by_trial["distill_3f2a_00005"]["drop_p"] == 0.3
    assert by_trial["distill_3f2a_00006"]["drop_p"] is None
    assert by_trial["distill_3f2a_00006"]["matching"] == "ewa"


def test_parquet_reads_back_to_the_front(
    store: StudyStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "front.parquet"
    assert main(pareto(store, "--format", "parquet", "--out", str(out))) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("4 of 9 trials of study 'attr_study' on the Pareto front of ")
    assert stdout.rstrip().endswith(f": wrote {out}")
    table = pq.read_table(out)
    assert table.column("trial").to_pylist() == ranked(DEFAULT, expected_front(DEFAULT))
    assert table.column_names[:6] == ["trial", "run_id", "status", "map", "attr_auc", "params"]
    assert table.column("beta").to_pylist() == [2.0, 1.0, 2.0, 4.0]
    assert table.schema.field("map").metadata == {b"apc.kind": b"metric", b"apc.name": b"map"}


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_out_writes_what_stdout_would_show(
    store: StudyStore, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    assert main(pareto(store, "--format", fmt)) == 0
    shown = capsys.readouterr().out
    out = tmp_path / f"front.{fmt}"
    assert main(pareto(store, "--format", fmt, "--out", str(out))) == 0
    written = out.read_text()
    assert written == (shown.split("\n", 1)[1] if fmt == "table" else shown)


def test_filter_restricts_the_trials_before_the_front(
    store: StudyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    objectives = {"map": "max", "params": "min"}
    args = pareto(store, "--objectives", "map:max,params:min", "--format", "json")
    assert main([*args, "--filter", "params.matching = 'sswa'"]) == 0
    records = json.loads(capsys.readouterr().out)
    sswa = [t for t in TRIALS if t.params["matching"] == "sswa"]
    assert {r["trial"] for r in records} == expected_front(objectives, sswa)
    assert main([*pareto(store, "--filter", "attributes.status = 'FINISHED'")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(
        f"4 of 8 trials of study '{STUDY}' matching \"attributes.status = 'FINISHED'\""
    )


def test_a_study_without_trials_gives_an_empty_front(
    store: StudyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pareto", OTHER, "--tracking-uri", store.uri, "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out == "trial,run_id,status,map,attr_auc,params\n"
    assert err == f"apc pareto: no trial runs of study '{OTHER}'\n"


BAD = [
    (
        ["--objectives", "map:up,mapp:max,,flops:min,attr_auc"],
        [
            "apc pareto: --objectives: map: must be min or max, got 'up'",
            "apc pareto: --objectives: empty item in 'map:up,mapp:max,,flops:min,attr_auc'",
            "apc pareto: --objectives: unknown metric 'mapp' (did you mean 'map'?)",
        ],
    ),
    (
        ["--objectives", ""],
        ["apc pareto: --objectives: must be NAME:min or NAME:max, comma-separated, got ''"],
    ),
    (
        ["--objectives", "accuracy:max"],
        [
            "apc pareto: --objectives: unknown metric 'accuracy' (valid: loss, map, map_samples, f1, top1, attr_cos, attr_l2, attr_auc, point_acc, params, nonzero_params, model_bytes, flops, latency_ms, latency_ms_b32, param_fraction, model_bytes_sparse, sparsity, pie_fraction, and attr_auc/point_acc/attr_cos/attr_l2_<method> for integrated_gradients/lrp/ebp/rap)"
        ],
    ),
    (
        ["--format", "parquet"],
        ["apc pareto: --format parquet: needs --out PATH (Parquet is not written to stdout)"],
    ),
    (
        ["--objectives", "map:best", "--format", "parquet"],
        [
            "apc pareto: --objectives: map: must be min or max, got 'best'",
            "apc pareto: --format parquet: needs --out PATH (Parquet is not written to stdout)",
        ],
    ),
    (
        ["--filter", "params.matching = swa", "--format", "csv", "--out", "front.csv"],
        [
            "apc pareto: --filter 'params.matching = swa': Parameter value is either not quoted or unidentified quote types used for string value swa. Use either single or double quotes."
        ],
    ),
    (
        ["--filter", "metrics.map > 1 OR metrics.map < 1", "--out", "front.txt"],
        [
            "apc pareto: --filter 'metrics.map > 1 OR metrics.map < 1': Invalid clause(s) in filter string: 'OR'"
        ],
    ),
    (
        ["--objectives", "map:max,flops:min", "--out", "front.txt"],
        [
            "apc pareto: --objectives: metric 'flops' was logged by no trial of study 'attr_study' (logged: attr_auc, attr_cos, map, params)"
        ],
    ),
    (
        ["--out", "no/such/dir/front.csv"],
        ["apc pareto: --out: directory no/such/dir does not exist"],
    ),
    (["--out", "."], ["apc pareto: --out: . is a directory"]),
]


@pytest.mark.parametrize(("args", "messages"), BAD)
def test_bad_input_exits_2_with_one_message_per_problem_and_writes_nothing(
    store: StudyStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    messages: list[str],
) -> None:
    assert main(pareto(store, *args)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == messages
    assert list(tmp_path.iterdir()) == []


def test_unknown_study_or_store(
    store: StudyStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pareto", "attr_stduy", "--tracking-uri", store.uri, "--out", "x.csv"]) == 2
    assert capsys.readouterr().err == (
        f"apc pareto: study 'attr_stduy': no such experiment in {store.uri}; "
        f"known: {STUDY}, {OTHER}\n"
    )
    assert main(["pareto", STUDY]) == 2  # the default store, sqlite:///mlflow.db, is not here
    assert capsys.readouterr().err == (
        "apc pareto: tracking URI 'sqlite:///mlflow.db': no MLflow store there "
        f"({tmp_path / 'mlflow.db'} does not exist)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_console_script_gives_no_traceback(store: StudyStore, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", "study.cli", "pareto", "nope", "--tracking-uri", store.uri],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        f"apc pareto: study 'nope': no such experiment in {store.uri}; known: {STUDY}, {OTHER}\n"
    )


def test_several_studies_share_one_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Studies of different compression methods: one front over all their trials."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from tests.analysis.mlflow_study import Trial

    uri = f"sqlite:///{tmp_path / 'mixed.db'}"
    client = MlflowClient(tracking_uri=uri)
    studies = {
        "kd": [
            Trial(
                "kd_0",
                {"method": "distillation", "student_width": "2"},
                {"map": 60.0, "params": 100.0},
            ),
            Trial(
                "kd_1",
                {"method": "distillation", "student_width": "4"},
                {"map": 50.0, "params": 30.0},
            ),
        ],
        "int8": [
            Trial(
                "q_0",
                {"method": "quantization", "mode": "static_int8"},
                {"map": 58.0, "params": 20.0},
            ),
            Trial("q_1", {"method": "quantization", "mode": "fp16"}, {"map": 49.0, "params": 40.0}),
        ],
    }
    for study, trials in studies.items():
        experiment = client.create_experiment(study, artifact_location=(tmp_path / study).as_uri())
        for trial in trials:
            run = client.create_run(experiment, tags={"apc.role": "trial"}, run_name=trial.name)
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, v, 0, 0) for k, v in trial.final.items()],
                params=[Param(k, v) for k, v in trial.params.items()],
            )
    objectives = {"map": "max", "params": "min"}
    args = ["pareto", "kd", "int8", "--tracking-uri", uri, "--objectives", "map:max,params:min"]
    assert main([*args, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    every = [t for trials in studies.values() for t in trials]
    assert {r["trial"] for r in rows} == expected_front(objectives, every) == {"kd_0", "q_0"}
    assert {r["trial"]: r["study"] for r in rows} == {"kd_0": "kd", "q_0": "int8"}
    assert {r["trial"]: r["mode"] for r in rows} == {"kd_0": "", "q_0": "static_int8"}
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.startswith("2 of 4 trials of studies 'kd', 'int8' on the Pareto front of")
    assert table.splitlines()[1].split()[:4] == ["trial", "study", "map", "params"]


def test_the_end_of_a_run_heads_its_table_in_words(
    store: StudyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """`apc run` and `apc resume` end with the front of the study run's FINISHED trials: the
    heading names the study, the count and the objectives, not the filter that selects them."""
    from study.cli.run import _print_front
    from study.runner import StudyOutcome
    from study.spec import parse_spec

    spec = parse_spec({"name": STUDY, "tracking_uri": store.uri})
    outcome = StudyOutcome(store.parent_run_id, trials=len(TRIALS), failed=1, seconds=1.0)
    _print_front(spec, outcome)
    out, err = capsys.readouterr()
    assert err == ""
    finished = [t for t in TRIALS if t.status == "FINISHED"]
    front = expected_front(DEFAULT, finished)
    assert out.splitlines()[0] == (
        f"Pareto front of study '{STUDY}': {len(front)} of {len(finished)} finished trials, "
        "over map (max), attr_auc (max), params (min)"
    )
    assert "tags.mlflow.parentRunId" not in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ranked(DEFAULT, front)
