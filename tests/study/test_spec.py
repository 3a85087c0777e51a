from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from study.cli import main
from study.preflight import input_problems
from study.presets import preset_paths
from study.spec import Spec, SpecError, load_spec, parse_spec

PRESET = Path(__file__).parents[2] / "study" / "presets" / "demo.yaml"


def test_demo_preset_is_valid_and_opens_with_its_command() -> None:
    spec = load_spec(PRESET)
    assert isinstance(spec, Spec)
    assert PRESET.read_text().startswith("# apc run study/presets/demo.yaml")
    assert spec.name == "demo"
    assert [p["matching"] for p in spec.enqueue] == ["none", "ewa", "swa", "sswa", "gradcam_cos"]
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
    assert spec.sampler == "gp"  # the tabulated benchmark's winner (docs/method.md)
    assert spec.scheduler is None
    assert spec.tracking_uri == "sqlite:///mlflow.db"
    assert spec.registry is False


@pytest.mark.parametrize("value", [True, False])
def test_registry_is_a_boolean(value: bool) -> None:
    assert parse_spec({"name": "s", "registry": value}).registry is value


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_registry_refuses_anything_but_a_boolean(value: object) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"name": "s", "registry": value})
    assert raised.value.problems == [f"registry: must be true or false, got {value!r}"]


def _problems(data: object) -> list[str]:
    """What `apc validate` reports: the spec's problems, else those of the files it names."""
    try:
        spec = parse_spec(data)
    except SpecError as error:
        return error.problems
    problems = input_problems(spec)
    assert problems, f"{data!r} is valid"
    return problems


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"name": "s", "dataset": {"image_size": -3}},
            "dataset.image_size: must be an integer in [7, 4096], got -3",
        ),
        ({"name": "s", "epochs": -1}, "epochs: must be an integer in [1, 10000], got -1"),
        (
            {"name": "s", "trials": "many"},
            "trials: must be an integer in [1, 100000], got 'many'",
        ),
        (
            {"name": "s", "sampler": "cmaes"},
            "sampler: must be one of ['gp', 'nsga2', 'tpe', 'random'], got 'cmaes'",
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
            "resources_per_trial.gpu: must be a number in [0, 1024], got -0.5",
        ),
        (
            {"name": "s", "resources_per_trial": {"cpu": 0}},
            "resources_per_trial.cpu: must be a number in (0, 1024], got 0",
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
            "evaluation.overlay_images: must be an integer in [0, 1000], got -1",
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
        f"{path}: dataset.image_size: must be an integer in [7, 4096], got -3",
        f"{path}: epochs: must be an integer in [1, 10000], got 0",
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
    spec = parse_spec(
        {
            "name": "s",
            "evaluation": {"attribution_methods": ["rap", "lrp", "rap"]},
            "objectives": {"map": "max", "attr_auc_lrp": "max"},
        }
    )
    assert spec.evaluation.attribution_methods == ("rap", "lrp")
    assert spec.evaluation.overlay_images == 8
    assert parse_spec({"name": "s"}).evaluation.attribution_methods == ()


# -- paths: one rule (#14): from the spec's folder, ~ expanded, absolute kept ----------------

SPACE_FILE = "parameters:\n  matching: {type: categorical, choices: [none, ewa]}\n"


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path/specs`` for the spec, space files beside, below, in a sibling folder and in
    HOME, and the working folder elsewhere, so that only the spec's folder can explain a find."""
    specs = tmp_path / "specs"
    for folder in (specs, specs / "sub", tmp_path / "spaces", tmp_path / "home"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kd.yaml").write_text(SPACE_FILE)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return specs.resolve()  # paths are compared as the spec resolves them (symlinks followed)


def _spec_file(folder: Path, data: Mapping[str, object]) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("reference", "file"),
    [
        ("sub/kd.yaml", "specs/sub/kd.yaml"),
        ("./kd.yaml", "specs/kd.yaml"),
        ("../spaces/kd.yaml", "spaces/kd.yaml"),
        ("~/kd.yaml", "home/kd.yaml"),
        ("{tmp}/spaces/kd.yaml", "spaces/kd.yaml"),
    ],
)
def test_search_space_file_path_forms(
    folders: Path, capsys: pytest.CaptureFixture[str], reference: str, file: str
) -> None:
    """`search_space: my/spaces/kd.yaml` and absolute paths crashed `apc validate` and `apc
    run` (ValueError: Invalid name '...yaml.yaml')."""
    tmp = folders.parent
    path = _spec_file(folders, {"name": "s", "search_space": reference.replace("{tmp}", str(tmp))})
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    spec = load_spec(path)
    assert spec.search_space.names == ("matching",)
    assert spec.search_space_ref == str(tmp / file)  # the file read, absolute


def test_a_missing_space_file_says_where_it_was_looked_for(folders: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(_spec_file(folders, {"name": "s", "search_space": "spaces/kd.yaml"}))
    assert caught.value.problems == [
        "search_space: must be an existing YAML file or a built-in space (distillation, "
        "quantization, structured_pruning, unstructured_pruning), got 'spaces/kd.yaml' "
        f"(no file {folders / 'spaces' / 'kd.yaml'})"
    ]


@pytest.mark.parametrize("form", ["data", "./data", "../specs/data", "~/data", "{tmp}/specs/data"])
def test_dataset_root_and_checkpoint_follow_the_rule(folders: Path, form: str) -> None:
    tmp = folders.parent
    for root in (folders / "data", tmp / "home" / "data"):
        (root / "train" / "cat").mkdir(parents=True)
    value = form.replace("{tmp}", str(tmp))
    spec = load_spec(
        _spec_file(folders, {"name": "s", "dataset": {"name": "imagefolder", "root": value}})
    )
    expected = tmp / "home" / "data" if form.startswith("~") else folders / "data"
    assert spec.dataset.root == str(expected)
    (folders / "sub" / "t.pt").write_bytes(b"")
    # an empty file: a checkpoint found, then read
    problems = input_problems(
        load_spec(_spec_file(folders, {"name": "s", "teacher": {"checkpoint": "sub/t.pt"}}))
    )
    assert problems[0].endswith("got 'sub/t.pt' (unreadable: empty or truncated file)")


def test_storage_and_an_sqlite_tracking_uri_are_taken_from_the_spec_folder(folders: Path) -> None:
    spec = load_spec(
        _spec_file(
            folders,
            {"name": "s", "storage_path": "results", "tracking_uri": "sqlite:///db/m.db?x=1"},
        )
    )
    assert spec.storage_path == str(folders / "results")
    assert spec.tracking_uri == f"sqlite:///{folders}/db/m.db?x=1"
    home = folders.parent / "home"
    spec = load_spec(
        _spec_file(
            folders,
            {"name": "s", "storage_path": "~/r", "tracking_uri": f"sqlite:///{home}/m.db"},
        )
    )
    assert (spec.storage_path, spec.tracking_uri) == (str(home / "r"), f"sqlite:///{home}/m.db")
    spec = load_spec(_spec_file(folders, {"name": "s", "tracking_uri": "sqlite:///~/m.db"}))
    assert spec.tracking_uri == f"sqlite:///{home}/m.db"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tracking_uri", "http://127.0.0.1:5000"),
        ("tracking_uri", "databricks"),
        ("tracking_uri", "sqlite:///:memory:"),
        ("storage_path", "s3://bucket/apc"),
    ],
)
def test_uris_are_kept_as_given(folders: Path, key: str, value: str) -> None:
    assert getattr(load_spec(_spec_file(folders, {"name": "s", key: value})), key) == value


def test_defaults_and_command_line_paths_are_the_working_folders(folders: Path) -> None:
    """What the spec does not give is the working folder's (as MLflow and Tune take it);
    paths given with --set (and --storage, --tracking-uri) were typed at a shell."""
    path = _spec_file(folders, {"name": "s"})
    spec = load_spec(path)
    assert (spec.tracking_uri, spec.storage_path) == ("sqlite:///mlflow.db", "apc_results")
    cwd = folders.parent / "elsewhere"
    (cwd / "kd.yaml").write_text(SPACE_FILE.replace("ewa", "swa"))  # not the spec folder's
    spec = load_spec(
        path, overrides=["storage_path=out", "tracking_uri=sqlite:///m.db", "search_space=kd.yaml"]
    )
    assert spec.storage_path == str(cwd / "out")
    assert spec.tracking_uri == f"sqlite:///{cwd}/m.db"
    assert spec.search_space_ref == str(cwd / "kd.yaml")
    assert spec.search_space.parameters[0].choices == ("none", "swa")


def test_the_effective_spec_of_a_space_file_loads_again_from_anywhere(
    folders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`apc resume` of a study whose space was a file died: the effective spec held its
    absolute path, which was taken for a built-in name. Round trip: a spec with its space in
    a subfolder, its effective text, loaded from another folder (and as resume reads it)."""
    from study.runner import effective_spec_text

    data = {
        "name": "s",
        "search_space": "sub/kd.yaml",
        "storage_path": "results",
        "tracking_uri": "sqlite:///m.db",
        "dataset": {"name": "shapes"},
    }
    first = load_spec(_spec_file(folders, data))
    text = effective_spec_text(data, base_dir=folders)
    other = folders.parent / "other"
    other.mkdir()
    moved = other / "spec.effective.yaml"
    moved.write_text(text)
    again = load_spec(moved)
    assert again.search_space == first.search_space
    assert again.search_space_ref == first.search_space_ref == str(folders / "sub" / "kd.yaml")
    assert (again.storage_path, again.tracking_uri) == (first.storage_path, first.tracking_uri)
    monkeypatch.chdir(other)
    resumed = parse_spec(yaml.safe_load(text))  # what load_study_spec does
    assert resumed.search_space == first.search_space
    assert effective_spec_text(yaml.safe_load(text), base_dir=other) == text  # a fixed point


# -- numbers: finite, within documented bounds (#14) ------------------------------------------

_CAPS = [
    ("seed", 2**32 - 1, "seed: must be an integer in [0, 4294967295]"),
    ("trials", 100_000, "trials: must be an integer in [1, 100000]"),
    ("max_concurrent", 10_000, "max_concurrent: must be an integer in [1, 10000]"),
    ("epochs", 10_000, "epochs: must be an integer in [1, 10000]"),
    ("teacher.epochs", 10_000, "teacher.epochs: must be an integer in [1, 10000]"),
    ("dataset.image_size", 4096, "dataset.image_size: must be an integer in [7, 4096]"),
    ("dataset.train_size", 10_000_000, "dataset.train_size: must be an integer in [1, 10000000]"),
    ("dataset.val_size", 10_000_000, "dataset.val_size: must be an integer in [1, 10000000]"),
    ("training.batch_size", 65_536, "training.batch_size: must be an integer in [1, 65536]"),
    (
        "training.num_workers",
        256,
        "training.num_workers: must be an integer in [0, 256] or 'auto'",
    ),
    (
        "evaluation.overlay_images",
        1000,
        "evaluation.overlay_images: must be an integer in [0, 1000]",
    ),
    ("scheduler.grace_period", 10_000, "scheduler.grace_period: must be an integer in [1, 10000]"),
    ("resources_per_trial.cpu", 1024, "resources_per_trial.cpu: must be a number in (0, 1024]"),
    ("resources_per_trial.gpu", 1024, "resources_per_trial.gpu: must be a number in [0, 1024]"),
]


def _nested(key: str, value: object) -> dict[str, object]:
    data: dict[str, object] = {"name": "s"}
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[leaf] = value
    return data


@pytest.mark.parametrize(("key", "cap", "rule"), _CAPS, ids=[c[0] for c in _CAPS])
def test_each_count_and_size_has_a_documented_cap(key: str, cap: int, rule: str) -> None:
    """trials, epochs, image_size, batch_size, num_workers, overlay_images had no upper bound;
    seed 4294967296 passed and failed inside Optuna; cpu .inf raised OverflowError in Ray."""
    parse_spec(_nested(key, cap))  # the cap itself is fine
    assert _problems(_nested(key, cap + 1)) == [f"{rule}, got {cap + 1}"]


@pytest.mark.parametrize(
    "key",
    [
        "resources_per_trial.cpu",
        "resources_per_trial.gpu",
        "training.lr",
        "training.weight_decay",
        "training.kd_temperature",
        "training.momentum",
        "training.kd_alpha",
        "teacher.lr",
        "scheduler.reduction_factor",
    ],
)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 10**400])
def test_every_float_is_finite(key: str, value: float) -> None:
    """`.inf` passed for cpu, lr, weight_decay, kd_temperature and teacher.lr; an int beyond
    any float (10**400) raised OverflowError."""
    problems = _problems(_nested(key, value))
    assert len(problems) == 1
    assert problems[0].startswith(f"{key}: must be a ")
    assert problems[0].endswith(f", got {value!r}")


def test_unbounded_floats_say_they_must_be_finite() -> None:
    assert _problems(_nested("training.lr", math.inf)) == [
        "training.lr: must be a finite number > 0, got inf"
    ]
    assert _problems(_nested("training.weight_decay", math.nan)) == [
        "training.weight_decay: must be a finite number >= 0, got nan"
    ]
    assert parse_spec(_nested("training.lr", 1e300)).training.optimization.lr == 1e300


@pytest.mark.parametrize("name", ["x\n", "x\r\n", "\nx", "x y", "-x", "x" * 101, ""])
def test_the_whole_name_must_match(name: str) -> None:
    """`name: "x\\n"` passed: the pattern was matched with `match`, whose `$` takes a final
    newline."""
    problems = _problems({"name": name})
    assert len(problems) == 1
    assert problems[0].startswith("name: must be 1-100 letters, digits")


def test_a_problem_is_one_line_whatever_it_quotes() -> None:
    problems = _problems({"name": "s", "tirals\nx": 1, "objectives": {"map\r": "max"}})
    assert problems == [
        "'tirals\\nx': unknown key (did you mean 'trials'?)",
        "objectives.'map\\r': unknown metric (did you mean 'map'?)",
    ]


# -- YAML that expands, nests or grows without bound (#14) ------------------------------------


def test_a_spec_of_nested_aliases_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1 KB spec of nested aliases exhausted memory (deep-copied with aliases expanded):
    depth 7 cost 4.7 s and 323 MB."""
    import time

    lines = ["name: s", "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    path = _write(tmp_path, "\n".join(lines) + "\n")
    started = time.monotonic()
    assert main(["validate", str(path)]) == 2
    assert time.monotonic() - started < 1.0
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: spec: {path} must hold at most 100000 values with its aliases (*name) "
        "expanded, got more at line 7, column 5"  # a5: 9 ** 6 values
    ]


def test_aliases_within_bounds_are_read_as_yaml_says(tmp_path: Path) -> None:
    text = (
        "name: s\n"
        "dataset: {name: shapes, options: &opts {context_prob: 0.2}}\n"
        "teacher: {dataset_options: *opts}\n"
        "training: &t {lr: 0.01}\n"
    )
    spec = load_spec(_write(tmp_path, text))
    assert spec.teacher.dataset_options == {"context_prob": 0.2} == spec.dataset.options


def test_a_spec_over_1_mib_is_refused_unread(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: s\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.problems == [
        f"spec: {path} must be at most 1048576 bytes (1 MiB) of YAML, got {path.stat().st_size} "
        "bytes"
    ]


def test_every_new_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'name: "x\\n"\nseed: 4294967296\nresources_per_trial: {cpu: .inf}\n'
        "training: {lr: .inf, batch_size: 100000}\nsearch_space: sub/nope.yaml\n",
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert sorted(p.partition(":")[0] for p in caught.value.problems) == [
        "name",
        "resources_per_trial.cpu",
        "search_space",
        "seed",
        "training.batch_size",
        "training.lr",
    ]


def test_parse_spec_asks_nothing_of_the_world(tmp_path: Path) -> None:
    """Schema and values only: paths are resolved, not opened; a checkpoint is not loaded
    (an unreadable one is valid here) and a data set is not built (its option values are
    preflight's to check)."""
    (tmp_path / "t.pt").write_bytes(b"not a checkpoint")
    spec = parse_spec(
        {
            "name": "s",
            "teacher": {"checkpoint": "t.pt"},
            "dataset": {"options": {"context_prob": 2}},
        },
        base_dir=tmp_path,
    )
    assert spec.teacher.checkpoint == str(tmp_path / "t.pt")
    assert spec.given_paths == {"teacher.checkpoint": "t.pt"}
    voc = parse_spec(
        {"name": "s", "dataset": {"name": "voc2012", "root": "~/nowhere"}}, base_dir=tmp_path
    )
    assert voc.dataset.root == str(Path("~/nowhere").expanduser())
    assert [p.partition(",")[0] for p in input_problems(spec)] == [
        "teacher.checkpoint: must be a PyTorch state dict (parameter names -> tensors) saved "
        "with torch.save",
        "dataset.options.context_prob: must be a number in [0.0",
    ]
    assert input_problems(voc) == [
        f"dataset.root: must be an existing folder, got '~/nowhere' (no folder "
        f"{Path('~/nowhere').expanduser()})"
    ]


@pytest.mark.parametrize("preset", preset_paths(), ids=lambda p: p.stem)
def test_presets_write_into_the_working_folder(preset: Path) -> None:
    """A preset's store and results are where `apc run` runs and `apc pareto` / `apc ui`
    look, never inside the installed package (a relative path in the spec would be taken from
    the preset's own folder)."""
    spec = load_spec(preset)
    assert (spec.tracking_uri, spec.storage_path) == ("sqlite:///mlflow.db", "apc_results")
