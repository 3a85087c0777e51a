"""A real study end to end: local Ray, OptunaSearch, a SQLite MLflow store, then `apc pareto`."""

from __future__ import annotations

import contextlib
import io
import math
import re
import sys
from pathlib import Path

import pytest

from study.cli import main

pytestmark = pytest.mark.integration

#: What the study fixture's `apc run` printed (stdout and stderr, Ray's worker lines too).
_PRINTED: dict[str, str] = {}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{root}/mlflow.db"
    # Ray's log monitor prints worker output to sys.stdout / sys.stderr as they are then.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(
            [
                "run",
                "--name",
                "tiny",
                "--trials",
                "2",
                "--tracking-uri",
                uri,
                "--storage",
                str(root / "results"),
                "--set",
                "epochs=2",
                "--set",
                "dataset.train_size=48",
                "--set",
                "dataset.val_size=16",
                "--set",
                "dataset.image_size=32",
                "--set",
                "teacher.epochs=1",
                "--set",
                "training.batch_size=16",
                "--set",
                "max_concurrent=2",
                "--set",
                "enqueue=[{matching: none, student_width: 2}, {matching: sswa, beta: 1.0, drop_p: 0.3, student_width: 2}]",
            ]
        )
    _PRINTED["run"] = printed.getvalue()
    sys.stdout.write(_PRINTED["run"])  # shown with a failing test's output
    assert code == 0
    return uri, root


def test_mlflow_holds_parent_teacher_and_nested_trials(study: tuple[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    uri, _ = study
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    roles = sorted(r.data.tags["apc.role"] for r in runs)
    assert roles == ["study", "teacher", "trial", "trial"]
    parent = next(r for r in runs if r.data.tags["apc.role"] == "study")
    assert parent.data.params["name"] == "tiny"
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    teacher = next(r for r in runs if r.data.tags["apc.role"] == "teacher")
    weights = [a.path for a in client.list_artifacts(teacher.info.run_id, "weights")]
    assert len(weights) == 1
    assert weights[0].startswith("weights/teacher-")
    trials = [r for r in runs if r.data.tags["apc.role"] == "trial"]
    for run in [teacher, *trials]:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
    by_matching = {r.data.params["matching"]: r for r in trials}
    assert set(by_matching) == {"none", "sswa"}
    assert "beta" not in by_matching["none"].data.params
    sswa = by_matching["sswa"].data.params
    assert (sswa["beta"], sswa["drop_p"], sswa["student_width"]) == ("1.0", "0.3", "2")
    assert sswa["method"] == "distillation"
    assert sswa["teacher_run_id"] == teacher.info.run_id
    for run in trials:
        assert {"loss", "map", "map_samples", "f1", "params"} <= set(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "map")
        assert sorted(m.step for m in history) == [0, 1]


def test_teacher_weights_are_cached_by_content_hash(study: tuple[str, Path]) -> None:
    _, root = study
    assert len(list((root / "results" / "teachers").glob("teacher-*.pt"))) == 1


def test_run_printed_the_pareto_front_and_refuses_an_existing_name(
    study: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, root = study
    assert main(["run", "--name", "tiny", "--tracking-uri", uri, "--storage", str(root)]) == 2
    err = capsys.readouterr().err
    assert (
        f"apc run: name: study 'tiny' already exists in {uri} and has run trials; finish it "
        f"with `apc resume tiny --tracking-uri {uri}`, or choose another --name"
    ) in err


def test_run_refuses_tune_state_that_another_store_does_not_know(
    study: tuple[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Same storage, another MLflow store: the new study would overwrite 'tiny''s Tune state."""
    _, root = study
    other = f"sqlite:///{tmp_path}/other.db"
    storage = root / "results"
    assert main(["run", "--name", "tiny", "--tracking-uri", other, "--storage", str(storage)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"apc run: name: Tune's storage already holds a study 'tiny' ({storage}/tiny) that "
        f"{other} does not know (another MLflow store's?); choose another --name or --storage"
    )
    assert not (tmp_path / "other.db").exists()  # nothing written


def test_objectives_missing_from_the_last_epoch_are_tagged(study: tuple[str, Path]) -> None:
    """The tag names exactly the objectives whose last epoch has no usable value (NaN or none).

    Here both trials usually score every objective, so this mostly checks there is no
    spurious tag; test_nan_objectives drives NaN results through the real callback."""
    from mlflow.tracking import MlflowClient

    from study.objectives import NAN_TAG

    uri, _ = study
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    trials = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`apc.role` = 'trial'"
    )
    assert len(trials) == 2
    for run in trials:
        last = max(m.step for m in client.get_metric_history(run.info.run_id, "map"))
        tagged = {line.split(":")[0] for line in run.data.tags.get(NAN_TAG, "").splitlines()}
        for objective in ("map", "attr_auc", "params"):
            history = client.get_metric_history(run.info.run_id, objective)
            final = [m.value for m in history if m.step == last]
            assert (objective in tagged) == (not final or math.isnan(final[-1]))


def test_effect_table_puts_each_enqueued_setting_under_the_teacher(
    study: tuple[str, Path],
) -> None:
    from mlflow.tracking import MlflowClient

    from analysis.effect import EFFECT_METRICS, effect_table, render_effect_table

    uri, _ = study
    rows = effect_table(uri, "tiny")
    assert [r.setting for r in rows] == [
        "teacher",
        "matching=none, student_width=2",
        "matching=sswa, beta=1.0, drop_p=0.3, student_width=2",
    ]
    client = MlflowClient(tracking_uri=uri)
    for row in rows:
        assert row.run_id is not None
        run = client.get_run(row.run_id)
        expected = {m: run.data.metrics[m] for m in EFFECT_METRICS if m in run.data.metrics}
        assert dict(row.metrics) == pytest.approx(expected, nan_ok=True)
    assert run.data.params["matching"] == "sswa"
    assert "attr_cos" not in rows[0].metrics  # the teacher has no teacher to compare with
    text = render_effect_table(rows)
    assert text.splitlines()[0] == "| setting | map | attr_auc | point_acc | attr_cos | attr_l2 |"
    assert text.splitlines()[2].startswith(f"| teacher | {rows[0].metrics['map']:.1f} |")


def test_report_on_the_study_holds_pies_and_overlays_of_its_trials(
    study: tuple[str, Path], tmp_path: Path
) -> None:
    """Each trial logged its per-sample Parquet and overlay maps; `apc report` uses them."""
    import csv

    from mlflow.tracking import MlflowClient

    from analysis.pies import load_per_sample

    uri, _ = study
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    trials = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags["apc.role"] == "trial"
    ]
    for run in trials:
        table = load_per_sample(uri, run.info.run_id)
        assert table is not None
        assert table.num_rows == 16
        agree = table.column("teacher_agree").to_numpy(zero_copy_only=False)
        assert run.data.metrics["pie_fraction"] == pytest.approx(1 - agree.mean())
    out = tmp_path / "report"
    assert main(["report", "tiny", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert (out / "attribution_overlays.png").is_file()
    with (out / "pies.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert sorted(r["row"] for r in rows) == ["SSWA", "naive"]
    assert "## PIEs" in (out / "report.md").read_text()


def test_the_terminal_shows_tunes_table_and_the_front_in_words(study: tuple[str, Path]) -> None:
    printed = _PRINTED["run"]
    assert "Trial status:" in printed  # Tune's status table (verbose=1) is kept
    # One line per trial epoch from Ray's storage logger was noise (72 in the demo).
    assert "Checkpoint successfully created" not in printed
    assert re.search(
        r"^Pareto front of study 'tiny': \d of 2 finished trials, over map \(max\), ",
        printed,
        re.MULTILINE,
    ), printed[-3000:]
    assert "attributes.status" not in printed
    assert re.search(
        r"^  and open http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?", printed, re.M
    )
