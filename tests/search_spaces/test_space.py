from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search_spaces import (
    SearchSpace,
    builtin_search_space_path,
    load_search_space,
    nearest_name,
    parse_search_space,
)


def _distillation() -> SearchSpace:
    space, problems = load_search_space("distillation", base_dir=Path.cwd())
    assert problems == []
    return space


def test_builtin_distillation_space_has_the_paper_knobs() -> None:
    space = _distillation()
    assert space.names == ("matching", "beta", "drop_p", "student_width")
    beta = space.parameters[1]
    assert beta.type == "loguniform"
    assert beta.low is not None
    assert beta.high is not None
    assert beta.low <= 1.0 <= 2.0 <= beta.high  # the paper's beta in our loss units
    assert builtin_search_space_path("distillation").is_file()


def test_define_by_run_samples_conditional_parameters_only_when_they_apply() -> None:
    space = _distillation()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[str]] = {}
    for _ in range(60):
        trial = study.ask()
        space.define_by_run(trial)
        params = trial.params
        seen.setdefault(params["matching"], set()).update(params)
        assert ("beta" in params) == (params["matching"] != "none")
        assert ("drop_p" in params) == (params["matching"] == "sswa")
        if "beta" in params:
            assert 0.2 <= params["beta"] <= 20.0
        assert params["student_width"] in (2, 4, 8)
        study.tell(trial, 0.0)
    assert set(seen) == {"none", "ewa", "swa", "sswa", "gradcam_cos"}


def test_enqueued_points_are_taken_by_define_by_run() -> None:
    space = _distillation()
    study = optuna.create_study()
    study.enqueue_trial({"matching": "sswa", "beta": 1.0, "drop_p": 0.3, "student_width": 8})
    trial = study.ask()
    space.define_by_run(trial)
    assert trial.params == {"matching": "sswa", "beta": 1.0, "drop_p": 0.3, "student_width": 8}


def test_check_point_reports_every_problem_with_its_path() -> None:
    problems = _distillation().check_point(
        {"matching": "swa", "beta": 0.0, "drop_p": 0.3, "width": 8}, path="enqueue[2]"
    )
    assert problems == [
        "enqueue[2].width: is not a parameter of the search space "
        "(parameters: matching, beta, drop_p, student_width)",
        "enqueue[2].beta: must be in [0.2, 20], got 0.0",
        "enqueue[2].drop_p: does not apply when matching is 'swa', got 0.3",
    ]
    assert _distillation().check_point({"matching": "none"}, path="p") == []


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"a": {"type": "normal"}}, "search_space.parameters.a.type: must be one of"),
        ({"a": {"type": "loguniform", "low": 0, "high": 1}}, "a.low: must be positive on a log"),
        ({"a": {"type": "uniform", "low": 2, "high": 1}}, "a: low must not exceed high"),
        ({"a": {"type": "uniform", "low": "x", "high": 1}}, "a.low: must be a finite number"),
        ({"a": {"type": "int", "low": 1, "high": 5, "step": 0}}, "a.step: must be a positive"),
        ({"a": {"type": "categorical", "choices": []}}, "a.choices: must be a non-empty list"),
        ({"a": {"type": "categorical", "choices": [1, 1]}}, "a.choices: must be distinct"),
        ({"a": {"type": "uniform", "low": 0, "hihg": 1}}, "a.hihg: unknown key for type uniform"),
        (
            {"b": {"type": "uniform", "low": 0, "high": 1, "when": {"a": ["x"]}}},
            "b.when.a: must name a parameter defined before 'b'",
        ),
        (
            {
                "a": {"type": "categorical", "choices": ["x"]},
                "b": {"type": "uniform", "low": 0, "high": 1, "when": {"a": ["y"]}},
            },
            "b.when.a: must be one of ['x'], got 'y'",
        ),
    ],
)
def test_invalid_spaces_are_reported(parameters: dict[str, object], message: str) -> None:
    _, problems = parse_search_space({"parameters": parameters})
    assert any(message in p for p in problems), problems


def test_int_parameter_and_all_problems_at_once() -> None:
    space, problems = parse_search_space(
        {"parameters": {"n": {"type": "int", "low": 2, "high": 8, "step": 2}}}
    )
    assert problems == []
    assert space.parameters[0].check(3) is None
    assert space.parameters[0].check(2.5) == "must be an integer in [2, 8], got 2.5"
    _, many = parse_search_space(
        {"parameters": {"a": {"type": "x"}, "b": {"type": "uniform", "low": 3, "high": 1}}}
    )
    assert len(many) == 2


def test_load_from_file_relative_to_the_spec_and_errors(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("parameters:\n  x: {type: uniform, low: 0, high: 1}\n")
    space, problems = load_search_space("mine.yaml", base_dir=tmp_path)
    assert problems == []
    assert space.names == ("x",)
    _, missing = load_search_space("nope.yaml", base_dir=tmp_path)
    assert missing == [
        "search_space: must be an existing YAML file or a built-in space (distillation, "
        "quantization, structured_pruning, unstructured_pruning), got 'nope.yaml' "
        f"(no file {tmp_path.resolve() / 'nope.yaml'})"
    ]
    (tmp_path / "bad.yaml").write_text("parameters: [unclosed\n")
    _, broken = load_search_space("bad.yaml", base_dir=tmp_path)
    assert broken[0].startswith("search_space: ")
    assert "is not valid YAML" in broken[0]


def test_nearest_name_is_case_insensitive() -> None:
    assert nearest_name("mAP", ["map", "attr_auc"]) == "map"
    assert nearest_name("matchin", ["matching", "beta"]) == "matching"
    assert nearest_name("zzz", ["map"]) is None


# -- references: a bare name is a built-in space, anything else a file path (#14) -----------

SPACE = "parameters:\n  x: {type: uniform, low: 0, high: 1}\n"


@pytest.fixture
def spaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path/specs`` (the spec's folder) and a space file in every place a path may name:
    the spec's folder, a subfolder, a sibling folder and HOME; the working folder elsewhere."""
    specs = tmp_path / "specs"
    for folder in (specs, specs / "sub", tmp_path / "spaces", tmp_path / "home"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kd.yaml").write_text(SPACE)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return specs


@pytest.mark.parametrize(
    "reference",
    ["sub/kd.yaml", "./kd.yaml", "kd.yaml", "../spaces/kd.yaml", "~/kd.yaml", "{abs}/sub/kd.yaml"],
)
def test_a_space_file_is_read_in_every_path_form(spaces: Path, reference: str) -> None:
    """A file in a folder, or an absolute path, used to crash (ValueError: Invalid name
    'sub/kd.yaml.yaml'): the reference was tried as a built-in name first."""
    space, problems = load_search_space(reference.replace("{abs}", str(spaces)), base_dir=spaces)
    assert problems == []
    assert space.names == ("x",)


def test_a_bare_name_is_a_built_in_space_only(spaces: Path) -> None:
    (spaces / "mine").write_text(SPACE)  # a file next to the spec does not make `mine` a file
    _, problems = load_search_space("mine", base_dir=spaces)
    assert problems == [
        "search_space: must be a built-in space (distillation, quantization, structured_pruning, "
        "unstructured_pruning) or a YAML file path, got 'mine' (a file path has a '/' or a "
        ".yaml ending, e.g. ./mine.yaml)"
    ]
    _, misspelt = load_search_space("distilation", base_dir=spaces)
    assert "did you mean 'distillation'?" in misspelt[0]
    assert load_search_space("./mine", base_dir=spaces)[1] == []  # with a '/', it is a file


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("sub/nope.yaml", "search_space: must be an existing YAML file or a built-in space"),
        ("sub", "search_space: must be a built-in space"),
        ("sub/", "search_space: must be an existing YAML file"),  # a folder is no file
        ("~no_such_user_here/kd.yaml", "search_space: must be a YAML file path, got "),
        (
            "a\x00b.yaml",
            "search_space: must be a YAML file path, got 'a\\x00b.yaml' (it holds a NUL",
        ),
        ("x" * 300 + ".yaml", "search_space: must be an existing YAML file"),  # name too long
    ],
)
def test_a_reference_that_names_no_space_file_is_one_problem(
    spaces: Path, reference: str, expected: str
) -> None:
    _, problems = load_search_space(reference, base_dir=spaces)
    assert len(problems) == 1
    assert problems[0].startswith(expected), problems


def test_builtin_search_space_path_takes_built_in_names_only() -> None:
    with pytest.raises(ValueError, match=r"name: must be a built-in search space \['distil"):
        builtin_search_space_path("my/spaces/kd.yaml")
    with pytest.raises(ValueError, match="got 'kd'"):
        builtin_search_space_path("kd")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"parameters: {x: \xff}\n", "must be UTF-8 text, got byte 0xff at offset 16"),
        (
            b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + b"".join(
                f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n".encode()
                for p, c in zip("abcdef", "bcdefg", strict=True)
            ),
            "must hold at most 100000 values with its aliases (*name) expanded",
        ),
        (b"parameters: &p {x: *p}\n", "must not hold a value that contains itself"),
    ],
    ids=["not-utf-8", "alias-bomb", "self-reference"],
)
def test_a_space_file_out_of_bounds_is_one_problem(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    """Unreadable files crashed (UnicodeDecodeError); an alias bomb expanded."""
    (tmp_path / "kd.yaml").write_bytes(content)
    _, problems = load_search_space("kd.yaml", base_dir=tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"search_space: {tmp_path.resolve() / 'kd.yaml'} {expected}")


def test_numbers_beyond_any_float_are_refused_not_raised() -> None:
    """float(10**400) overflows: it crashed the space's checks."""
    _, problems = parse_search_space(
        {"parameters": {"a": {"type": "uniform", "low": 0, "high": 10**400}}}
    )
    assert problems == [f"search_space.parameters.a.high: must be a finite number, got {10**400!r}"]
    space, ok = parse_search_space({"parameters": {"n": {"type": "int", "low": 1, "high": 8}}})
    assert ok == []
    assert space.parameters[0].check(10**400) == f"must be in [1, 8], got {10**400!r}"
    assert space.parameters[0].check(float("nan")) == "must be an integer in [1, 8], got nan"
