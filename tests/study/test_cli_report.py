"""`apc report NAME`: end to end on a real SQLite MLflow store, and its bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis.report import REPORT_FILES
from study.cli import main
from tests.analysis.test_report import (
    STUDY,
    TRIALS,
    UNFINISHED,
    ReportStudy,
    write_report_study,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ReportStudy:
    return write_report_study(tmp_path_factory.mktemp("cli_report_store"))


@pytest.fixture(autouse=True)
def _in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command runs in an empty directory, so a stray file (mlflow.db, mlruns) shows."""
    monkeypatch.chdir(tmp_path)


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` with a hash of its bytes."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def report_artifacts(store: ReportStudy, run_id: str) -> list[str]:
    client = MlflowClient(tracking_uri=store.uri)
    return sorted(a.path for a in client.list_artifacts(run_id, "report"))


def test_report_logs_to_the_newest_study_run_and_writes_out(
    store: ReportStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "report"
    assert main(["report", STUDY, "--tracking-uri", store.uri, "--out", str(out)]) == 0
    stdout, err = capsys.readouterr()
    assert err == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    assert report_artifacts(store, store.parent_run_id) == sorted(
        f"report/{name}" for name in REPORT_FILES
    )
    assert report_artifacts(store, store.old_parent_run_id) == []  # only the newest study run
    client = MlflowClient(tracking_uri=store.uri)
    fetched = Path(client.download_artifacts(store.parent_run_id, "report", str(tmp_path)))
    for name in REPORT_FILES:
        assert (fetched / name).read_bytes() == (out / name).read_bytes(), name
    # Prints the Markdown table as report.md holds it, then where everything went.
    markdown = (out / "report.md").read_text()
    table = stdout.split("\n\n10 of 12 trials FINISHED")[0]
    assert table.startswith(f"**Table.** Study `{STUDY}` (study run `{store.parent_run_id}`)")
    assert table in markdown
    rows = [line for line in table.splitlines() if line.startswith("| distillation |")]
    assert [line.split(" | ")[4] for line in rows] == [
        "teacher",
        TRIALS[0].name,
        TRIALS[1].name,
        TRIALS[6].name,
        TRIALS[3].name,
        TRIALS[11].name,
    ]
    assert "distill_ab12_00099" not in stdout  # the older study run's trial
    lines = stdout.splitlines()
    assert lines[-3] == (
        "10 of 12 trials FINISHED; 4 on the Pareto front of map:max, attr_auc:max, params:min"
    )
    assert lines[-2].startswith(
        f"logged to study run {store.parent_run_id} under report/: {', '.join(REPORT_FILES)} ("
    )
    assert lines[-1] == f"wrote {', '.join(REPORT_FILES)} to {out}"
    # Again, without --out: the artifacts are replaced, nothing lands in the working folder.
    assert main(["report", STUDY, "--tracking-uri", store.uri]) == 0
    assert not capsys.readouterr().out.splitlines()[-1].startswith("wrote")
    assert report_artifacts(store, store.parent_run_id) == sorted(
        f"report/{name}" for name in REPORT_FILES
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["new", fetched.name])


def bad_cases(store: ReportStudy, cwd: Path) -> list[tuple[list[str], list[str]]]:
    (cwd / "taken").write_text("a file")
    db = cwd / "mlflow.db"
    return [
        (
            ["report", "paper_stduy", "--tracking-uri", store.uri],
            [
                f"apc report: study 'paper_stduy': no such experiment in {store.uri}; "
                f"known: {STUDY}, {UNFINISHED}"
            ],
        ),
        (
            ["report", STUDY, "--tracking-uri", "http://127.0.0.1:1"],
            [
                "apc report: --tracking-uri: must be reachable, got 'http://127.0.0.1:1' (127.0.0.1:1: connection refused)"
            ],
        ),
        (
            ["report", STUDY],  # the default store, sqlite:///mlflow.db, is not here
            [
                f"apc report: tracking URI 'sqlite:///mlflow.db': no MLflow store there ({db} does not exist)"
            ],
        ),
        (
            ["report", UNFINISHED, "--tracking-uri", store.uri],
            [
                f"apc report: study '{UNFINISHED}': no FINISHED trial under its study run "
                f"{store.unfinished_parent_run_id} to report on (trial runs: 1 FAILED)"
            ],
        ),
        (
            ["report", STUDY, "--tracking-uri", store.uri, "--out", "taken"],
            ["apc report: --out: taken is a file; give a directory"],
        ),
        (
            ["report", STUDY, "--tracking-uri", store.uri, "--out", "taken/report"],
            ["apc report: --out: taken is a file; give a directory"],
        ),
        (
            ["report", STUDY, "--tracking-uri", "sqlite:///no/such/mlflow.db", "--out", "taken"],
            [
                "apc report: --out: taken is a file; give a directory",
                "apc report: --tracking-uri: must name an SQLite file in an existing, writable folder, got 'sqlite:///no/such/mlflow.db' (no folder no/such)",
            ],
        ),
    ]


def test_bad_input_exits_2_with_one_message_each_and_writes_nothing(
    store: ReportStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = bad_cases(store, tmp_path)
    before = snapshot(store.root, tmp_path)
    for args, messages in cases:
        assert main(args) == 2, args
        out, err = capsys.readouterr()
        assert out == "", args
        assert err.splitlines() == messages, args
    assert snapshot(store.root, tmp_path) == before
    assert report_artifacts(store, store.unfinished_parent_run_id) == []
