"""analysis.report: the paper's table and the plots of a study written into a real SQLite store."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

import analysis
from analysis.hypervolume import default_reference, hypervolume
from analysis.pareto import Direction, pareto_front
from analysis.report import (
    DEFAULT_OBJECTIVES,
    REPORT_FILES,
    REPORT_METRICS,
    NoFinishedTrialsError,
    Report,
    format_metric,
    parent_filter,
    plot_pareto_matrix,
    study_objectives,
    write_report,
)
from analysis.runs import load_trials
from tests.analysis.mlflow_study import T0, Trial, expected_front
from trainables.overlays import OverlayMaps, save_overlay_maps
from trainables.trial_artifacts import per_sample_table

pytestmark = pytest.mark.integration

STUDY = "paper_study"
UNFINISHED = "unfinished_study"
ENQUEUE = [
    {"matching": "none", "student_width": 2},
    {"matching": "ewa", "beta": 2.0, "student_width": 2},
    {"matching": "swa", "beta": 1.0, "student_width": 2},
    {"matching": "sswa", "beta": 1.0, "drop_p": 0.3, "student_width": 2},
    {"matching": "gradcam_cos", "beta": 5.0, "student_width": 2},
]
OBJECTIVES: dict[str, Direction] = {"map": "max", "attr_auc": "max", "params": "min"}
TEACHER = {
    "map": 80.0,
    "f1": 70.0,
    "attr_auc": 90.0,
    "point_acc": 60.0,
    "params": 612294.0,
    "attr_auc_lrp": 85.0,
    "point_acc_lrp": 55.0,
}


def _trial(i: int, status: str, final: dict[str, float], **params: object) -> Trial:
    text = {"method": "distillation", **{k: str(v) for k, v in params.items()}}
    return Trial(f"distill_ab12_{i:05d}", text, final, status)


def _final(
    map_: float, auc: float, params: float, cos: float = 0.9, l2: float = 0.3
) -> dict[str, float]:
    return {
        "map": map_,
        "f1": map_ / 2,
        "attr_auc": auc,
        "point_acc": auc - 40.0,
        "attr_cos": cos,
        "attr_l2": l2,
        "params": params,
    }


#: The trials of STUDY's newest study run, in start order. The enqueued naive, EWA and SSWA
#: trials FINISHED; the enqueued SWA one FAILED, so SWA's row is its best FINISHED trial by
#: map (6, tied with the later 8; the KILLED 7 has a higher map). Trial 4 beats the enqueued
#: naive one on map but the enqueued setting wins. Trial 9 has the best map and a NaN attr_auc.
#: Trial 11, the enqueued Grad-CAM cos one, FINISHED; trial 5 dominates it (off the front).
TRIALS: list[Trial] = [
    _trial(
        0, "FINISHED", _final(50.0, 88.0, 150000.0, 0.91, 0.37), matching="none", student_width=2
    ),
    _trial(
        1,
        "FINISHED",
        _final(60.0, 92.0, 150000.0, 0.94, 0.29),
        matching="ewa",
        beta=2.0,
        student_width=2,
    ),
    _trial(2, "FAILED", _final(70.0, 95.0, 150000.0), matching="swa", beta=1.0, student_width=2),
    _trial(
        3,
        "FINISHED",
        _final(52.0, 95.5, 150000.0, 0.97, 0.18),
        matching="sswa",
        beta=1.0,
        drop_p=0.3,
        student_width=2,
    ),
    _trial(4, "FINISHED", _final(65.0, 89.0, 40000.0), matching="none", student_width=4),
    _trial(5, "FINISHED", _final(62.0, 96.0, 40000.0), matching="swa", beta=0.5, student_width=4),
    _trial(
        6,
        "FINISHED",
        _final(64.0, 93.0, 10000.0, 0.95, 0.21),
        matching="swa",
        beta=4.0,
        student_width=8,
    ),
    _trial(7, "KILLED", _final(90.0, 99.0, 10000.0), matching="swa", beta=8.0, student_width=8),
    _trial(8, "FINISHED", _final(64.0, 91.0, 150000.0), matching="swa", beta=0.1, student_width=2),
    _trial(
        9,
        "FINISHED",
        {**_final(75.0, 0.0, 40000.0), "attr_auc": math.nan},
        matching="ewa",
        beta=0.25,
        student_width=4,
    ),
    _trial(
        10,
        "FINISHED",
        _final(58.0, 97.0, 10000.0),
        matching="sswa",
        beta=2.0,
        drop_p=0.1,
        student_width=8,
    ),
    _trial(
        11,
        "FINISHED",
        _final(61.0, 94.0, 150000.0, 0.96, 0.25),
        matching="gradcam_cos",
        beta=5.0,
        student_width=2,
    ),
]
#: LRP's metrics, measured with the last epoch, of the table's trials.
LRP = {0: 70.0, 1: 80.0, 3: 82.0, 6: 75.0}
for _i, _auc in LRP.items():
    TRIALS[_i].final.update(
        {
            "attr_auc_lrp": _auc,
            "point_acc_lrp": _auc - 30.0,
            "attr_cos_lrp": _auc / 100,
            "attr_l2_lrp": 1 - _auc / 100,
        }
    )
FINISHED = [t for t in TRIALS if t.status == "FINISHED"]
#: Samples of each trial's per-sample table, and which of them are its PIEs.
SAMPLES = 12


def pie_indices(i: int) -> list[int]:
    return [row for row in range(SAMPLES) if (row + i) % 4 == 0]


def _per_sample(i: int) -> pa.Table:
    """Trial i's per-sample table: its PIEs (pie_indices) predict class 3 on top of the
    teacher's set; PIEs are right less often and their maps agree less."""
    teacher = np.zeros((SAMPLES, 5), dtype=bool)
    teacher[np.arange(SAMPLES), np.arange(SAMPLES) % 3] = True
    predicted = teacher.copy()
    pies = pie_indices(i)
    predicted[pies, 3] = True
    rows = np.arange(SAMPLES)
    return per_sample_table(
        {
            "index": rows,
            "correct": ~np.isin(rows, pies),
            "teacher_correct": rows % 2 == 0,
            "attr_auc": 50.0 + rows,
            "attr_cos": np.where(np.isin(rows, pies), 0.3, 0.9),
            "predicted": predicted,
            "teacher_predicted": teacher,
        }
    )


def _overlay_maps(i: int) -> OverlayMaps:
    """Maps of 3 images; trial 6's explain other classes (another teacher): left out."""
    rng = np.random.default_rng(i)
    return OverlayMaps(
        images=np.full((3, 16, 16, 3), 120, dtype=np.uint8),
        indices=np.arange(3),
        targets=np.array([0, 1, 2]) if i != 6 else np.array([1, 1, 1]),
        class_names=("a", "b", "c", "d", "e"),
        teacher=rng.random((3, 16, 16)).astype(np.float32),
        student=rng.random((3, 16, 16)).astype(np.float32),
    )


def _log_artifacts(client: MlflowClient, run_id: str, i: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(_per_sample(i), folder / "per_sample.parquet")
    client.log_artifact(run_id, str(folder / "per_sample.parquet"), "evaluation")
    save_overlay_maps(_overlay_maps(i), folder / "attribution_maps.npz")
    client.log_artifact(run_id, str(folder / "attribution_maps.npz"), "attributions")


#: (row, trial index or None, how it was chosen): the table's rows after the teacher's.
EXPECTED_ROWS = [
    ("naive", 0, "enqueued"),
    ("EWA", 1, "enqueued"),
    ("SWA", 6, "best map of 3 FINISHED (enqueued trial FAILED)"),
    ("SSWA", 3, "enqueued"),
    ("Grad-CAM cos (ECCV'24)", 11, "enqueued"),
]


@dataclass
class ReportStudy:
    """A store holding STUDY (an older study run with one trial, then the newest one with
    TRIALS) and UNFINISHED (a study run whose only trial FAILED)."""

    uri: str
    root: Path
    parent_run_id: str = ""
    old_parent_run_id: str = ""
    old_trial_run_id: str = ""
    teacher_run_id: str = ""
    unfinished_parent_run_id: str = ""
    trial_run_ids: dict[str, str] = field(default_factory=dict)


def _log_trial(
    client: MlflowClient, experiment: str, parent: str, trial: Trial, start: int, teacher: str
) -> str:
    run = client.create_run(
        experiment,
        start_time=start,
        tags={"apc.role": "trial", "mlflow.parentRunId": parent, "apc.trial_id": trial.name},
        run_name=trial.name,
    )
    params = {**trial.params, "teacher_run_id": teacher}
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
    return str(run.info.run_id)


def write_report_study(root: Path) -> ReportStudy:
    """Write STUDY and UNFINISHED into a fresh SQLite store under ``root``, as the runner lays
    a study out (docs/design.md#mlflow-layout)."""
    store = ReportStudy(uri=f"sqlite:///{root / 'mlflow.db'}", root=root)
    client = MlflowClient(tracking_uri=store.uri)
    artifacts = (root / "artifacts").as_uri()
    experiment = client.create_experiment(STUDY, artifact_location=f"{artifacts}/{STUDY}")
    spec = [
        Param("method", "distillation"),
        Param("enqueue", json.dumps(ENQUEUE)),
        *(Param(f"objectives.{k}", v) for k, v in OBJECTIVES.items()),
    ]
    # An older study run of the same name: `apc report` reads the newest one only.
    old = client.create_run(experiment, start_time=T0, tags={"apc.role": "study"}, run_name=STUDY)
    store.old_parent_run_id = old.info.run_id
    client.log_batch(old.info.run_id, params=spec)
    store.old_trial_run_id = _log_trial(
        client,
        experiment,
        old.info.run_id,
        _trial(99, "FINISHED", _final(99.0, 99.0, 100.0), matching="none", student_width=2),
        T0 + 1000,
        "none",
    )
    client.set_terminated(old.info.run_id, status="FAILED")
    start = T0 + 100_000
    parent = client.create_run(
        experiment, start_time=start, tags={"apc.role": "study"}, run_name=STUDY
    )
    store.parent_run_id = parent.info.run_id
    client.log_batch(parent.info.run_id, params=spec)
    nested = {"mlflow.parentRunId": parent.info.run_id}
    teacher = client.create_run(
        experiment,
        start_time=start + 1000,
        tags={"apc.role": "teacher", **nested},
        run_name="teacher",
    )
    store.teacher_run_id = teacher.info.run_id
    client.log_batch(
        teacher.info.run_id,
        metrics=[Metric(k, v, start, 0) for k, v in TEACHER.items()],
        params=[Param("arch", "vgg11_bn"), Param("width", "4")],
    )
    client.set_terminated(teacher.info.run_id)
    for i, trial in enumerate(TRIALS):
        store.trial_run_ids[trial.name] = _log_trial(
            client,
            experiment,
            parent.info.run_id,
            trial,
            start + 2000 + 1000 * i,
            teacher.info.run_id,
        )
        if trial.status == "FINISHED":
            _log_artifacts(client, store.trial_run_ids[trial.name], i, root / "out" / str(i))
    client.set_terminated(parent.info.run_id)

    other = client.create_experiment(UNFINISHED, artifact_location=f"{artifacts}/{UNFINISHED}")
    lone = client.create_run(other, start_time=T0, tags={"apc.role": "study"}, run_name=UNFINISHED)
    store.unfinished_parent_run_id = lone.info.run_id
    _log_trial(
        client,
        other,
        lone.info.run_id,
        _trial(0, "FAILED", _final(10.0, 50.0, 100.0), matching="swa", beta=1.0),
        T0 + 1000,
        "none",
    )
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ReportStudy:
    return write_report_study(tmp_path_factory.mktemp("report_store"))


@pytest.fixture(scope="module")
def report(store: ReportStudy, tmp_path_factory: pytest.TempPathFactory) -> Report:
    folder = tmp_path_factory.mktemp("report") / "report"
    return write_report(store.uri, STUDY, parent_run_id=store.parent_run_id, folder=folder)


def finished_table(store: ReportStudy) -> pa.Table:
    trials = load_trials(store.uri, STUDY, filter_string=parent_filter(store.parent_run_id))
    return trials.filter(pc.equal(trials.column("status"), "FINISHED"))


def test_rows_are_the_teacher_then_each_kinds_enqueued_or_best_finished_trial(
    store: ReportStudy, report: Report
) -> None:
    teacher, *rows = report.rows
    assert (teacher.method, teacher.row, teacher.chosen, teacher.trial) == (
        "distillation",
        "teacher",
        "teacher run",
        "teacher",
    )
    assert teacher.run_id == store.teacher_run_id
    assert teacher.setting == "arch=vgg11_bn, width=4"
    assert dict(teacher.metrics) == TEACHER  # no attr_cos / attr_l2: nothing to compare with
    assert [(r.row, r.trial, r.chosen) for r in rows] == [
        (row, TRIALS[i].name, chosen) for row, i, chosen in EXPECTED_ROWS
    ]
    for r, (_, i, _) in zip(rows, EXPECTED_ROWS, strict=True):
        assert r.method == "distillation"
        assert r.run_id == store.trial_run_ids[TRIALS[i].name]
        # The last epoch's values, not the best epoch's.
        assert dict(r.metrics) == TRIALS[i].final
    assert [r.setting for r in rows] == [
        "student_width=2",
        "beta=2, student_width=2",
        "beta=4, student_width=8",
        "beta=1, drop_p=0.3, student_width=2",
        "beta=5, student_width=2",
    ]
    assert report.trials == len(TRIALS)
    assert report.finished == len(FINISHED)
    assert dict(report.objectives) == OBJECTIVES


def test_csv_and_markdown_hold_the_same_rows(report: Report) -> None:
    text = (report.folder / "report.csv").read_text()
    records = list(csv.DictReader(io.StringIO(text)))
    lrp = ["attr_auc_lrp", "point_acc_lrp", "attr_cos_lrp", "attr_l2_lrp"]
    assert list(records[0]) == [
        "method",
        "row",
        "chosen",
        "setting",
        "trial",
        "run_id",
        *REPORT_METRICS,
        *lrp,
    ]
    assert [r["row"] for r in records] == [
        "teacher",
        "naive",
        "EWA",
        "SWA",
        "SSWA",
        "Grad-CAM cos (ECCV'24)",
    ]
    for record, row in zip(records, report.rows, strict=True):
        assert record["trial"] == (row.trial or "")
        assert record["run_id"] == (row.run_id or "")
        for metric in [*REPORT_METRICS, *lrp]:  # the CSV holds the stored values exactly
            expected = row.metrics.get(metric)
            assert record[metric] == ("" if expected is None else repr(expected))
    markdown = (report.folder / "report.md").read_text()
    assert report.table in markdown
    assert "the FINISHED trial of that kind with the best `map`" in report.table
    lines = [line for line in report.table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["method", "row", "setting", "chosen", "trial", *REPORT_METRICS]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert len(cells) == len(records)
    for record, line_cells in zip(records, cells, strict=True):
        shown = dict(zip(header, line_cells, strict=True))
        assert (shown["method"], shown["row"], shown["chosen"]) == (
            record["method"],
            record["row"],
            record["chosen"],
        )
        assert shown["trial"] == (record["trial"] or "-")
        assert shown["setting"] == (record["setting"] or "-")
        for metric in REPORT_METRICS:
            value = float(record[metric]) if record[metric] else None
            assert shown[metric] == format_metric(metric, value)
    naive = dict(zip(header, cells[1], strict=True))
    assert (naive["map"], naive["attr_cos"], naive["params"]) == ("50.0", "0.910", "150,000")
    assert dict(zip(header, cells[0], strict=True))["attr_cos"] == "-"


def test_pngs_are_valid_images_of_plausible_size(report: Report) -> None:
    assert [p.name for p in report.files] == list(REPORT_FILES)
    for path in report.files:
        assert path.parent == report.folder
        if path.suffix != ".png":
            continue
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path.name
        assert 10_000 < len(data) < 2_000_000, (path.name, len(data))
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert image.format == "PNG"
        assert 500 <= width <= 2000, (path.name, width)
        assert 300 <= height <= 2000, (path.name, height)


def test_the_highlighted_front_is_pareto_fronts_rows(
    store: ReportStudy, report: Report, tmp_path: Path
) -> None:
    finished = finished_table(store)
    front = pareto_front(finished, OBJECTIVES)
    names = expected_front(dict(OBJECTIVES), FINISHED)
    assert set(front.column("trial").to_pylist()) == names
    assert report.front == front.num_rows == len(names) == 4
    two: dict[str, Direction] = {"map": "max", "params": "min"}
    path = tmp_path / "two.png"
    assert plot_pareto_matrix(finished, two, path) == len(expected_front(dict(two), FINISHED))
    assert path.stat().st_size > 10_000
    # An objective no trial logged: nothing is on the front, the plot still comes out.
    assert plot_pareto_matrix(finished, {"map": "max", "flops": "min"}, path) == 0


def test_hypervolume_history_counts_finished_trials_in_start_order(
    store: ReportStudy, report: Report
) -> None:
    finished = finished_table(store)
    reference = default_reference(finished, OBJECTIVES)
    assert report.reference == reference
    assert [k for k, _ in report.hypervolume] == list(range(1, len(TRIALS) + 1))
    volumes = [v for _, v in report.hypervolume]
    assert volumes == sorted(volumes)
    assert volumes[-1] == hypervolume(finished, OBJECTIVES, reference=reference)
    # Trial 2 FAILED: it adds nothing, whatever its values.
    assert volumes[2] == volumes[1]
    assert volumes[0] == hypervolume(finished.slice(0, 1), OBJECTIVES, reference=reference)


def test_objectives_come_from_the_parent_run_or_the_default() -> None:
    params = {"seed": "0", "objectives.map": "max", "objectives.flops": "min", "method": "x"}
    assert study_objectives(params) == {"map": "max", "flops": "min"}
    assert study_objectives({"seed": "0"}) == DEFAULT_OBJECTIVES


def test_no_finished_trial_is_refused_before_anything_is_written(
    store: ReportStudy, tmp_path: Path
) -> None:
    folder = tmp_path / "never"
    with pytest.raises(NoFinishedTrialsError) as raised:
        write_report(
            store.uri, UNFINISHED, parent_run_id=store.unfinished_parent_run_id, folder=folder
        )
    assert str(raised.value) == (
        f"study '{UNFINISHED}': no FINISHED trial under its study run "
        f"{store.unfinished_parent_run_id} to report on (trial runs: 1 FAILED)"
    )
    assert not folder.exists()


def test_the_package_exports_the_report() -> None:
    assert analysis.write_report is write_report
    assert analysis.Report is Report


def test_pie_section_and_csv_hold_each_rows_pies(store: ReportStudy, report: Report) -> None:
    records = list(csv.DictReader(io.StringIO((report.folder / "pies.csv").read_text())))
    assert [r["row"] for r in records] == [row for row, _, _ in EXPECTED_ROWS]
    assert records[-1]["row"] == "Grad-CAM cos (ECCV'24)"
    for record, (_, i, _) in zip(records, EXPECTED_ROWS, strict=True):
        pies = pie_indices(i)
        rest = [row for row in range(SAMPLES) if row not in pies]
        assert record["run_id"] == store.trial_run_ids[TRIALS[i].name]
        assert (int(record["samples"]), int(record["pies"])) == (SAMPLES, len(pies))
        assert float(record["pie_fraction"]) == pytest.approx(len(pies) / SAMPLES)
        assert float(record["pie_accuracy"]) == 0.0
        assert float(record["rest_accuracy"]) == 100.0
        assert float(record["pie_teacher_accuracy"]) == pytest.approx(
            100 * np.mean([row % 2 == 0 for row in pies])
        )
        assert float(record["pie_attr_auc"]) == pytest.approx(50 + np.mean(pies))
        assert float(record["rest_attr_auc"]) == pytest.approx(50 + np.mean(rest))
        assert float(record["pie_attr_cos"]) == pytest.approx(0.3)
    markdown = (report.folder / "report.md").read_text()
    assert "## PIEs" in markdown
    assert f"| distillation | naive | {TRIALS[0].name} | 12 | 3 | 25.0 | 0.0 / 100.0 |" in markdown


def test_further_methods_get_the_papers_table_per_method(report: Report) -> None:
    markdown = (report.folder / "report.md").read_text()
    assert "### LRP" in markdown
    assert "| distillation | teacher | teacher | 85.0 | 55.0 | - | - |" in markdown
    assert f"| distillation | EWA | {TRIALS[1].name} | 80.0 | 50.0 | 0.800 | 0.200 |" in markdown
    assert "### EBP" not in markdown


def test_overlays_put_the_rows_with_the_same_images_side_by_side(report: Report) -> None:
    path = report.folder / "attribution_overlays.png"
    assert path in report.files
    with Image.open(path) as image:
        width, height = image.size
    # Image, teacher, naive, EWA, SSWA, Grad-CAM cos (SWA's maps explain other classes):
    # 6 columns, 3 rows.
    assert width > height
    markdown = (report.folder / "report.md").read_text()
    assert (
        "Grad-CAM of the teacher and of the naive, EWA, SSWA, Grad-CAM cos (ECCV'24) trials"
        in markdown
    )
