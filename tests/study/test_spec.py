from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.cli import main
from study.spec import Spec, SpecError, load_spec, parse_spec

PRESET = Path(__file__).parents[2] / "study" / "presets" / "demo.yaml"


def test_demo_preset_is_valid_and_opens_with_its_command() -> None:
    spec = load_spec(PRESET)
    assert isinstance(spec, Spec)
    assert PRESET.read_text().startswith("# apc run study/presets/demo.yaml")
    assert spec.name == "demo"
    assert [p["matching"] for p in spec.enqueue] == ["none", "ewa", "swa", "sswa"]
    assert spec.objectives == {"map": "max", "attr_auc": "max", "params": "min"}
    assert spec.dataset.image_size == 64
    assert spec.teacher.arch == "vgg11_bn"


@pytest.mark.parametrize("method", ["structured_pruning", "unstructured_pruning"])
def test_pruning_presets_are_valid_share_the_demo_teacher_and_open_with_their_command(
    method: str,
) -> None:
    from study.teacher import teacher_key

    path = PRESET.with_name(f"{method}.yaml")
    spec = load_spec(path)
    assert path.read_text().startswith(f"# apc run study/presets/{method}.yaml")
    assert spec.method == method
    assert "prune_rate" in spec.search_space.names
    assert all("prune_rate" in p for p in spec.enqueue)
    assert teacher_key(spec) == teacher_key(load_spec(PRESET))  # the cached teacher is reused


def test_defaults_for_a_minimal_spec() -> None:
    spec = parse_spec({"name": "s"})
    assert spec.method == "distillation"
    assert spec.search_space.names[0] == "matching"
    assert spec.dataset.name == "shapes"
    assert spec.sampler == "nsga2"
    assert spec.scheduler is None
    assert spec.tracking_uri == "sqlite:///mlflow.db"


def _problems(data: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return caught.value.problems


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"name": "s", "dataset": {"image_size": -3}},
            "dataset.image_size: must be an integer >= 7, got -3",
        ),
        ({"name": "s", "epochs": -1}, "epochs: must be a positive integer, got -1"),
        ({"name": "s", "trials": "many"}, "trials: must be a positive integer, got 'many'"),
        (
            {"name": "s", "sampler": "cmaes"},
            "sampler: must be one of ['nsga2', 'tpe', 'random'], got 'cmaes'",
        ),
        ({"name": "s", "tirals": 3}, "tirals: unknown key (did you mean 'trials'?)"),
        (
            {"name": "s", "teacher": {"widht": 2}},
            "teacher.widht: unknown key (did you mean 'width'?)",
        ),
        (
            {"name": "s", "objectives": {"mAP": "max"}},
            "objectives.mAP: unknown metric (did you mean 'map'?)",
        ),
        (
            {"name": "s", "objectives": {"map": "up"}},
            "objectives.map: must be min or max, got 'up'",
        ),
        (
            {"name": "s", "resources_per_trial": {"gpu": -0.5}},
            "resources_per_trial.gpu: must be a number in [0, inf], got -0.5",
        ),
        (
            {"name": "s", "resources_per_trial": {"cpu": 0}},
            "resources_per_trial.cpu: must be a number in (0, inf], got 0",
        ),
        (
            {"name": "s", "training": {"momentum": 1.0}},
            "training.momentum: must be a number in [0, 1), got 1.0",
        ),
        ({"name": "s", "scheduler": {"metric": "acc"}}, "scheduler.metric: must be one of"),
        (
            {"name": "s", "dataset": {"name": "voc2012"}},
            "dataset.root: is required for voc2012, got nothing",
        ),
        (
            {"name": "s", "dataset": {"name": "voc2012", "root": "/nonexistent/voc"}},
            "dataset.root: must be an existing folder, got '/nonexistent/voc'",
        ),
        (
            {"name": "s", "teacher": {"checkpoint": "missing.pt"}},
            "teacher.checkpoint: must be an existing file, got 'missing.pt'",
        ),
        (
            {"name": "s", "method": "quantisation"},
            "method: must be one of ['distillation', 'structured_pruning', "
            "'unstructured_pruning', 'quantization'], got 'quantisation'",
        ),
        (
            {
                "name": "s",
                "method": "quantization",
                "search_space": "quantization",
                "enqueue": [{"mode": "int4"}],
            },
            "enqueue[0].mode: must be one of ['qat_int8', 'fp16', 'dynamic_int8', "
            "'static_int8'], got 'int4'",
        ),
        (
            {"name": "s", "method": "unstructured_pruning", "epochs": 3},
            "method_options.steps: must divide epochs (3) so that every pruning step fine-tunes "
            "as long, got 16 (the default, as the paper)",
        ),
        (
            {"name": "s", "method": "structured_pruning", "method_options": {"scheme": "l1"}},
            "method_options.scheme: must be one of ['paper', 'uniform', 'layers', 'global'], "
            "got 'l1'",
        ),
        (
            {"name": "s", "method_options": {"scheme": "paper"}},
            "method_options.scheme: distillation takes no options, got 'paper'",
        ),
        (
            {"name": "s", "method": "structured_pruning", "method_options": [1]},
            "method_options: must be a mapping, got [1]",
        ),
        (
            {"name": "s", "enqueue": [{"matching": "sswa", "drop_p": 1.0}]},
            "enqueue[0].drop_p: must be in [0.05, 0.6], got 1.0",
        ),
        ({"name": "bad name"}, "name: must be 1-100 letters, digits"),
        ({"seed": 1}, "name: is required"),
        (
            {"name": "s", "dataset": {"options": {"context_prb": 0.5}}},
            "dataset.options.context_prb: unknown option of shapes (did you mean 'context_prob'?)",
        ),
        (
            {"name": "s", "teacher": {"dataset_options": {"contxt_prob": 0.0}}},
            "teacher.dataset_options.contxt_prob: unknown option of shapes "
            "(did you mean 'context_prob'?)",
        ),
        (
            {"name": "s", "teacher": {"dataset_options": [0.0]}},
            "teacher.dataset_options: must be a mapping, got [0.0]",
        ),
        (
            {"name": "s", "dataset": {"options": {"context_prob": 2.0}}},
            "dataset.options.context_prob: must be a number in [0.0, 1.0], got 2.0",
        ),
        (
            {"name": "s", "dataset": {"image_size": 16}},
            "dataset.image_size: must be an integer >= 32, got 16",
        ),
        (
            {"name": "s", "teacher": {"dataset_options": {"num_objects": [0, 9]}}},
            "teacher.dataset_options.num_objects: must satisfy 1 <= min <= max <= 10, got [0, 9]",
        ),
        (
            {
                "name": "s",
                "dataset": {"options": {"num_classes": 3}},
                "teacher": {"dataset_options": {"num_objects": [1, 5]}},
            },
            "teacher.dataset_options.num_objects: must satisfy 1 <= min <= max <= 3, got [1, 5]",
        ),
        (
            {"name": "s", "evaluation": {"attribution_methods": ["lrp", "gradcam"]}},
            "evaluation.attribution_methods: must name methods among integrated_gradients, lrp, "
            "ebp, rap (Grad-CAM is always on), got ['lrp', 'gradcam']",
        ),
        (
            {"name": "s", "evaluation": {"overlay_images": -1}},
            "evaluation.overlay_images: must be an integer >= 0, got -1",
        ),
        (
            {"name": "s", "objectives": {"map": "max", "attr_auc_rap": "max"}},
            "objectives.attr_auc_rap: needs 'rap' in evaluation.attribution_methods, got []",
        ),
        (
            {
                "name": "s",
                "evaluation": {"attribution_methods": ["lrp"]},
                "scheduler": {"metric": "attr_auc_lrp"},
            },
            "scheduler.metric: must be measured every epoch; attr_auc_lrp is measured with a "
            "trial's last epoch only, got 'attr_auc_lrp'",
        ),
    ],
)
def test_each_problem_names_key_rule_and_value(data: dict[str, object], expected: str) -> None:
    problems = _problems(data)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(
        {"name": "s", "epochs": 0, "trials": 0, "dataset": {"image_size": 0}, "bogus": 1}
    )
    assert len(problems) == 4


def test_not_a_mapping() -> None:
    assert _problems([1, 2]) == ["spec: must be a YAML mapping of keys to values, got [1, 2]"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_apc_validate_accepts_the_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(PRESET)]) == 0
    assert "valid study 'demo'" in capsys.readouterr().out


def test_apc_validate_reports_each_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {"name": "s", "dataset": {"image_size": -3}, "epochs": 0}
    path = _write(tmp_path, yaml.safe_dump(spec))
    before = sorted(tmp_path.iterdir())
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}: dataset.image_size: must be an integer >= 7, got -3",
        f"{path}: epochs: must be a positive integer, got 0",
    ]
    assert sorted(tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed\n", "is not valid YAML"),
        ("- just\n- a list\n", "spec: must be a YAML mapping"),
        ("", "spec: must be a YAML mapping of keys to values, got None"),
    ],
)
def test_apc_validate_malformed_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    assert main(["validate", str(_write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err


def test_apc_validate_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/nonexistent/spec.yaml"]) == 2
    assert "spec: no such file: '/nonexistent/spec.yaml'" in capsys.readouterr().err


def test_training_optimizer_choice() -> None:
    spec = parse_spec({"name": "s", "training": {"optimizer": "adamw", "lr": 0.002}})
    assert spec.training.optimization.optimizer == "adamw"
    assert spec.training.optimization.lr == 0.002
    assert _problems({"name": "s", "training": {"optimizer": "adam"}}) == [
        "training.optimizer: must be one of ['sgd', 'adamw'], got 'adam'"
    ]


def test_teacher_key_ignores_student_only_settings_and_tracks_teacher_ones() -> None:
    from study.teacher import teacher_key

    base = load_spec(PRESET)
    data = yaml.safe_load(PRESET.read_text())
    students = {**data, "training": {**data["training"], "lr": 0.123, "kd_alpha": 0.5}}
    assert teacher_key(parse_spec(students)) == teacher_key(base)
    teacher = {**data, "teacher": {**data["teacher"], "lr": 0.123}}
    assert teacher_key(parse_spec(teacher)) != teacher_key(base)
    batch = {**data, "training": {**data["training"], "batch_size": 7}}
    assert teacher_key(parse_spec(batch)) != teacher_key(base)
    other_data = {**data, "teacher": {**data["teacher"], "dataset_options": {"noise_std": 0.1}}}
    assert teacher_key(parse_spec(other_data)) != teacher_key(base)
    # The demo's teacher never sees the shortcut, so its strength on the task data and the
    # evaluation split's size do not change the teacher.
    options = {**data["dataset"]["options"], "context_prob": 0.9}
    task = {**data, "dataset": {**data["dataset"], "options": options, "val_size": 9}}
    assert teacher_key(parse_spec(task)) == teacher_key(base)


def test_evaluation_section_names_further_methods_once() -> None:
    spec = parse_spec({
        "name": "s", "evaluation": {"attribution_methods": ["rap", "lrp", "rap"]},
        "objectives": {"map": "max", "attr_auc_lrp": "max"},
    })  # fmt: skip
    assert spec.evaluation.attribution_methods == ("rap", "lrp")
    assert spec.evaluation.overlay_images == 8
    assert parse_spec({"name": "s"}).evaluation.attribution_methods == ()
