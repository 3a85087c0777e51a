"""The MLflow layout has one home (analysis.layout), and StudyRecord reads back what the
driver's writer (study.tracking.StudyTracker) lays out, on a real SQLite store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from analysis import layout
from analysis.layout import (
    COLUMN_KIND_KEY,
    DEFAULT_OBJECTIVES,
    EFFECTIVE_SPEC_FILE,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    NOTE_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SEARCHED_PARAMS,
    STUDY_ROLE,
    TAG_KEYS,
    TRIAL_ROLE,
    TRIAL_TAG,
    parent_filter,
    trial_params,
)
from analysis.record import NoStudyRunError, StudyRecord, load_study_record
from analysis.runs import TrackingStoreError, UnknownStudyError, load_trials

ROOT = Path(__file__).resolve().parents[2]
#: The packages whose sources must name the layout through analysis.layout.
PACKAGES = ("study", "analysis", "trainables", "bench")
#: Where the layout's names are defined (the trial-side file names: trainables.artifact_names,
#: re-exported by trainables.trial_artifacts).
HOMES = {
    ROOT / "analysis" / "layout.py",
    ROOT / "trainables" / "trial_artifacts.py",
    ROOT / "trainables" / "artifact_names.py",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions (prose may name
    a tag; code must not spell one)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _spells_a_tag(value: str) -> bool:
    return (
        value.startswith("apc.")
        or "mlflow.parentRunId" in value
        or any(key in value for key in TAG_KEYS)
    )


def test_tag_keys_are_spelled_in_the_layout_module_only() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path in HOMES:
                continue
            tree = ast.parse(path.read_text("utf-8"), filename=str(path))
            docstrings = _docstrings(tree)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Constant) or id(node) in docstrings:
                    continue
                value = node.value
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                if isinstance(text, str) and _spells_a_tag(text):
                    where = path.relative_to(ROOT)
                    offenders.append(f"{where}:{node.lineno}: {text!r}")
    assert offenders == [], "use analysis.layout's names instead:\n" + "\n".join(offenders)


def test_the_source_test_finds_a_spelled_tag() -> None:
    # The check above would pass vacuously if it never saw a literal: it sees the layout's.
    tree = ast.parse((ROOT / "analysis" / "layout.py").read_text("utf-8"))
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert set(TAG_KEYS) <= literals
    assert COLUMN_KIND_KEY in literals


def test_every_name_in_all_exists_and_tags_are_distinct() -> None:
    assert sorted(layout.__all__) == sorted(set(layout.__all__))
    for name in layout.__all__:
        assert hasattr(layout, name), name
    assert len(set(TAG_KEYS)) == len(TAG_KEYS)
    # MLflow's own tags are MLflow's names; apc's are under apc.
    mlflow_tags = {PARENT_TAG, NOTE_TAG, EXPERIMENT_KIND_TAG}
    assert all(key.startswith("apc.") for key in TAG_KEYS if key not in mlflow_tags)


def test_the_searched_params_cover_every_methods_parameters() -> None:
    from trainables.registry import method_parameters

    _METHOD_PARAMETERS = method_parameters()

    used = {p for params in _METHOD_PARAMETERS.values() for p in params}
    assert used == set(SEARCHED_PARAMS)


def test_the_cli_default_objectives_are_the_layouts() -> None:
    from study.cli import _parser

    args = _parser().parse_args(["pareto", "some_study"])
    assert args.objectives == ",".join(f"{m}:{d}" for m, d in DEFAULT_OBJECTIVES.items())


# StudyRecord, on a store the driver's writer filled.

NAME = "recorded"


def _effective(name: str) -> tuple[str, dict[str, object]]:
    from study.presets import DEMO_SPEC

    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["name"] = name
    # Not the params' order: a record's objectives come from the spec itself.
    data["objectives"] = {"params": "min", "map": "max"}
    return yaml.safe_dump(data, sort_keys=False), data


def _write_study(uri: str, root: Path, *, trials: list[str]) -> tuple[str, str]:
    """One study run of NAME through StudyTracker: its teacher and ``trials`` (FINISHED, with
    a map each); returns the study and teacher run ids."""
    from study.presets import DEMO_SPEC
    from study.spec import load_spec
    from study.tracking import StudyTracker

    text, _ = _effective(NAME)
    spec = load_spec(DEMO_SPEC, overrides=[f"name={NAME}", "objectives={params: min, map: max}"])
    tracker = StudyTracker(
        uri, name=NAME, objectives=spec.objectives, spool=root / f"{len(trials)}.jsonl"
    )
    parent = tracker.start_study(spec, DEMO_SPEC.read_text(), text)
    teacher = tracker.log_teacher({"map": 80.0}, {"arch": "vgg11_bn", "width": "4"})
    for i, trial in enumerate(trials):
        config = {"matching": "swa", "beta": 1.0 + i, "student_width": 2, "unrelated": 3}
        tracker.trial_started(
            trial, trial_params(config, method=spec.method, teacher_run_id=teacher)
        )
        tracker.trial_result(trial, {"map": 50.0 + i, "loss": 1.0, "epoch": 0})
        tracker.trial_ended(trial, status="FINISHED")
    assert tracker.close(status="FINISHED") == 0
    return parent, teacher


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("record")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_parent, _ = _write_study(uri, root, trials=["t_old"])
    parent, teacher = _write_study(uri, root, trials=["t0", "t1"])
    from mlflow.tracking import MlflowClient

    # A study run written by hand with the layout's names: no effective spec, params only.
    client = MlflowClient(tracking_uri=uri)
    bare = client.create_experiment("bare")
    run = client.create_run(bare, run_name="bare", tags={ROLE_TAG: STUDY_ROLE})
    client.log_param(run.info.run_id, "objectives.attr_auc", "max")
    client.log_param(run.info.run_id, "method", "quantization")
    client.log_param(run.info.run_id, "enqueue", '[{"matching": "none"}]')
    client.create_run(bare, run_name="x", tags={ROLE_TAG: TRIAL_ROLE, PARENT_TAG: run.info.run_id})
    client.create_experiment("empty")
    return {
        "uri": uri,
        "root": str(root),
        "parent": parent,
        "teacher": teacher,
        "old_parent": old_parent,
        "bare": run.info.run_id,
    }


def test_a_record_holds_the_newest_study_run_its_spec_teacher_and_trials(
    store: dict[str, str],
) -> None:
    record = load_study_record(NAME, tracking_uri=store["uri"])
    assert isinstance(record, StudyRecord)
    assert record.name == NAME
    assert record.parent_run_id == store["parent"]
    assert record.spec == _effective(NAME)[1]
    assert record.teacher is not None
    assert record.teacher.info.run_id == store["teacher"]
    assert [r.data.tags[TRIAL_TAG] for r in record.trials] == ["t0", "t1"]
    assert [r.data.params["beta"] for r in record.trials] == ["1.0", "2.0"]
    assert all("unrelated" not in r.data.params for r in record.trials)
    # The spec's order, though MLflow holds the objectives as params too.
    assert list(record.objectives.items()) == [("params", "min"), ("map", "max")]
    assert record.params["objectives.map"] == "max"
    assert record.method == "distillation"
    assert record.enqueued == _effective(NAME)[1]["enqueue"]
    # The table is load_trials' for the study run, through the record's one client.
    expected = load_trials(store["uri"], NAME, filter_string=parent_filter(store["parent"]))
    assert record.table().equals(expected)
    assert record.client.download_artifacts(store["parent"], EFFECTIVE_SPEC_FILE)
    # Marked as model training: MLflow's UI opens it on its runs.
    experiment = record.client.get_experiment_by_name(NAME)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_a_record_of_an_older_study_run(store: dict[str, str]) -> None:
    record = StudyRecord.load(NAME, tracking_uri=store["uri"], parent_run_id=store["old_parent"])
    assert record.parent_run_id == store["old_parent"]
    assert [r.data.tags[TRIAL_TAG] for r in record.trials] == ["t_old"]
    assert record.teacher is not None
    assert record.teacher.info.run_id != store["teacher"]
    # An experiment given for a name reads the same.
    again = load_study_record(record.experiment, tracking_uri=store["uri"])
    assert again.parent_run_id == store["parent"]


def test_a_study_run_without_an_effective_spec_is_read_from_its_params(
    store: dict[str, str],
) -> None:
    record = load_study_record("bare", tracking_uri=store["uri"])
    assert record.parent_run_id == store["bare"]
    assert record.spec is None
    assert record.teacher is None
    assert len(record.trials) == 1
    assert record.objectives == {"attr_auc": "max"}
    assert record.method == "quantization"
    assert record.enqueued == [{"matching": "none"}]


def test_what_is_not_there_is_said_and_never_created(store: dict[str, str], tmp_path: Path) -> None:
    uri = store["uri"]
    with pytest.raises(NoStudyRunError) as raised:
        load_study_record("empty", tracking_uri=uri)
    assert str(raised.value) == f"study 'empty': no study run (tag {ROLE_TAG}=study) in {uri}"
    assert isinstance(raised.value, UnknownStudyError)
    with pytest.raises(NoStudyRunError, match="no study run nope "):
        load_study_record(NAME, tracking_uri=uri, parent_run_id="nope")
    with pytest.raises(UnknownStudyError, match=r"^study 'recordd': no such experiment in "):
        load_study_record("recordd", tracking_uri=uri)
    missing = tmp_path / "none.db"
    with pytest.raises(TrackingStoreError, match="no MLflow store there"):
        load_study_record(NAME, tracking_uri=f"sqlite:///{missing}")
    assert not missing.exists()
