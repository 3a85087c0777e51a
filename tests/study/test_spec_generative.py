"""Generated specs through the real `apc validate`: the presets and the demo spec, mutated the
ways users get them wrong (wrong types, numbers out of range or not finite, path forms,
unicode, YAML aliases, broken YAML, missing and extra keys).

Whatever the spec, `apc validate` exits 0 or 2, answers a 2 with problem lines only (no
traceback), and writes nothing. Paths in their documented forms load; numbers are refused
exactly outside their documented bounds (study.spec's MAX_* constants).

Examples are derandomized (the same ones every run) so that the default tier stays fast and
stable; ``APC_SPEC_EXAMPLES=2000`` explores further, with fresh examples each run.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_spaces import builtin_search_space_path
from study import spec as spec_module
from study.cli import main
from study.presets import DEMO_SPEC
from trainables.models import imagenet_weights_file

PRESETS = sorted({*DEMO_SPEC.parent.glob("*.yaml"), DEMO_SPEC})
BASES: tuple[dict[str, Any], ...] = tuple(yaml.safe_load(p.read_text()) for p in PRESETS)

_EXAMPLES = int(os.environ.get("APC_SPEC_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=_EXAMPLES or 150,
    deadline=timedelta(seconds=2),  # one validate takes ~15 ms; a slow shared machine, 100x
    derandomize=not _EXAMPLES,
    database=None,  # nothing written: no .hypothesis folder
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the world of one example: a folder with the spec, space files and a home ---------------


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, voc2012_tree: Path) -> Path:
    """tmp_path as working folder and HOME, so that any stray write, or a `~` path, lands
    where the examples look. The paper presets' data (``~/data``, a generated VOC tree) and
    ImageNet weights file (an empty one: preflight asks only that it is there) are in place."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "data").symlink_to(voc2012_tree, target_is_directory=True)
    weights = imagenet_weights_file("vgg16_bn").path
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.touch()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def _example(world: Path, method: str) -> Iterator[Path]:
    """A fresh folder ``specs/`` (the spec's), with the method's built-in space copied to
    ``specs/kd.yaml``, ``specs/sub/kd.yaml``, ``spaces/kd.yaml`` beside it and ``~/kd.yaml``."""
    folder = Path(tempfile.mkdtemp(dir=world, prefix="ex"))
    specs = folder / "specs"
    (specs / "sub").mkdir(parents=True)
    (folder / "spaces").mkdir()
    text = builtin_search_space_path(method).read_text()
    for file in (specs / "kd.yaml", specs / "sub" / "kd.yaml", folder / "spaces" / "kd.yaml"):
        file.write_text(text)
    home_space = world / "home" / "kd.yaml"
    home_space.write_text(text)
    try:
        yield specs
    finally:
        shutil.rmtree(folder)
        home_space.unlink()


def _validate(world: Path, spec: Path, content: str | bytes) -> tuple[int, list[str], str]:
    """Write ``content`` to ``spec``, run `apc validate` in-process; assert the contract that
    holds for every spec: exit 0 or 2, no traceback, problem lines only, nothing written."""
    if isinstance(content, bytes):
        spec.write_bytes(content)
    else:
        spec.write_text(content, encoding="utf-8")
    before = _tree(world)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", str(spec)])
    assert code in (0, 2), (code, err.getvalue())
    assert "Traceback" not in out.getvalue() + err.getvalue()
    assert _tree(world) == before, "apc validate must write nothing"
    lines = err.getvalue().splitlines()
    if code == 2:
        assert lines, "exit 2 must say why"
        assert all(line.startswith(f"{spec}: ") and len(line) > len(f"{spec}: ") for line in lines)
    else:
        assert lines == []
        assert "valid study" in out.getvalue()
    return code, [line.removeprefix(f"{spec}: ") for line in lines], out.getvalue()


# -- mutations -------------------------------------------------------------------------------


def _key_paths(
    data: object, prefix: tuple[str | int, ...] = (), seen: set[int] | None = None
) -> list[tuple[str | int, ...]]:
    """Every key path in ``data`` (mappings and list items), sections and leaves alike; a
    value met again (shared, as an alias) is not walked again."""
    seen = set() if seen is None else seen
    if id(data) in seen:
        return []
    seen.add(id(data))
    items: list[tuple[str | int, Any]] = []
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    paths: list[tuple[str | int, ...]] = []
    for key, value in items:
        paths.append((*prefix, key))
        paths.extend(_key_paths(value, (*prefix, key), seen))
    return paths


#: Keys a spec may give that the presets leave out.
ABSENT_KEYS: tuple[tuple[str, ...], ...] = (
    ("training", "num_workers"),
    ("training", "precision"),
    ("training", "channels_last"),
    ("training", "momentum"),
    ("training", "weight_decay"),
    ("training", "kd_temperature"),
    ("training", "kd_alpha"),
    ("evaluation", "overlay_images"),
    ("evaluation", "attribution_methods"),
    ("scheduler", "grace_period"),
    ("scheduler", "reduction_factor"),
    ("scheduler",),
    ("teacher", "checkpoint"),
    ("teacher", "pretrained"),
    ("dataset", "root"),
    ("ray_address",),
    ("method_options",),
)

NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 7, 2**32 - 1, 2**32, 10**30, 10**400, 100_001, 4097, 1025]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=12), st.dates())
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
#: The forms a path takes; {abs} is the spec's folder.
PATH_FORMS = st.one_of(
    st.sampled_from(
        [
            "kd.yaml",
            "./kd.yaml",
            "sub/kd.yaml",
            "../spaces/kd.yaml",
            "~/kd.yaml",
            "{abs}/sub/kd.yaml",
            "kd",
            "distillation",
            "quantization",
            "kd.yml",
            "sub/nope.yaml",
            "sub",
            "sub/",
            ".",
            "/",
            "~",
            "~no_such_user_here/kd.yaml",
            "a\x00b.yaml",
            "x" * 300,
            "x" * 300 + "/kd.yaml",
            "sqlite:///mlflow.db",
            "sqlite:///~/m.db",
            "sqlite:////{abs}/m.db",
            "sqlite://",
            "sqlite:///:memory:",
            "http://127.0.0.1:1",
            "s3://bucket/x",
            "results",
            "~/results",
            "databricks",
        ]
    ),
    st.text(max_size=20),
)
PATH_KEYS = [tuple(k.split(".")) for k in spec_module.PATH_KEYS]


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set ``path`` to ``value``, making the mappings on the way (replacing what is none)."""
    node: Any = data
    for index, part in enumerate(path):
        last = index == len(path) - 1
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                return  # an earlier mutation changed the structure: nothing to set
            if last:
                node[part] = value
                return
            if not isinstance(node[part], dict | list):
                node[part] = {}
            node = node[part]
            continue
        if last:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, dict | list) or (
            isinstance(child, list) and not isinstance(path[index + 1], int)
        ):
            child = node[part] = {}
        node = child


def _delete(data: dict[str, Any], path: tuple[str | int, ...]) -> None:
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]


def _bomb(width: int, depth: int) -> list[Any]:
    """Lists of lists that share their items: safe_dump writes each once, as an anchor, and
    refers to it with aliases; expanded it holds width ** depth values."""
    value: list[Any] = [1] * width
    for _ in range(depth - 1):
        value = [value] * width
    return value


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str | bytes]:
    """(the base's method, the spec's text or bytes): a base spec with 1-4 mutations."""
    data = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(BASES))))  # a fresh copy
    method = str(data.get("method", "distillation"))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["value", "number", "path", "delete", "extra", "alias", "bomb"])
        )
        paths = _key_paths(data)
        if kind == "value":
            _set(data, draw(st.sampled_from(paths + list(ABSENT_KEYS))), draw(VALUES))
        elif kind == "number":
            _set(data, draw(st.sampled_from(paths + list(ABSENT_KEYS))), draw(NUMBERS))
        elif kind == "path":
            form = draw(PATH_FORMS)
            _set(data, draw(st.sampled_from(PATH_KEYS)), form)
        elif kind == "delete" and paths:
            _delete(data, draw(st.sampled_from(paths)))
        elif kind == "extra":
            _set(
                data,
                (
                    *draw(st.sampled_from([(), ("dataset",), ("training",)])),
                    draw(st.text(min_size=1, max_size=10)),
                ),
                draw(SCALARS),
            )
        elif kind == "alias":  # one mapping in two places: anchors and aliases in the text
            dataset = data.get("dataset")
            options = dataset.get("options") if isinstance(dataset, dict) else None
            shared = options if isinstance(options, dict) else {"context_prob": 0.0}
            _set(data, ("teacher", "dataset_options"), shared)
            _set(data, ("dataset", "options"), shared)
        elif kind == "bomb":
            bomb = _bomb(draw(st.integers(2, 9)), draw(st.integers(1, 9)))
            _set(data, draw(st.sampled_from(paths + list(ABSENT_KEYS))), bomb)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))
    # Two in three specs reach validation whole; the third is broken as a file.
    raw = draw(st.sampled_from(["", "truncate", "tab", "duplicate", "bytes", "huge"] + [""] * 9))
    if raw == "truncate":
        return method, text[: draw(st.integers(0, len(text)))]
    if raw == "tab":
        at = draw(st.integers(0, len(text)))
        return method, text[:at] + "\t" + text[at:]
    if raw == "duplicate":
        return method, text + "trials: 3\n"
    if raw == "bytes":
        return method, text.encode() + draw(st.binary(min_size=1, max_size=8))
    if raw == "huge":
        return method, text + "#" * spec_module.MAX_YAML_BYTES + "\n"
    return method, text


def _fill(content: str | bytes, specs: Path) -> str | bytes:
    if isinstance(content, bytes):
        return content.replace(b"{abs}", str(specs).encode())
    return content.replace("{abs}", str(specs))


@SETTINGS
@given(case=mutated())
def test_any_mutated_spec_exits_0_or_2_with_problem_lines_and_writes_nothing(
    world: Path, case: tuple[str, str | bytes]
) -> None:
    method, content = case
    with _example(world, method) as specs:
        _validate(world, specs / "spec.yaml", _fill(content, specs))


# -- paths in their documented forms load the same space -------------------------------------

GOOD_FORMS = (
    "kd.yaml",
    "./kd.yaml",
    "sub/kd.yaml",
    "../spaces/kd.yaml",
    "~/kd.yaml",
    "{abs}/sub/kd.yaml",
    "{abs}/../spaces/kd.yaml",
    "sub/../kd.yaml",
)


@SETTINGS
@given(base=st.sampled_from(BASES), form=st.sampled_from(GOOD_FORMS))
def test_a_space_file_in_any_documented_form_is_read_as_the_built_in(
    world: Path, base: dict[str, Any], form: str
) -> None:
    method = str(base.get("method", "distillation"))
    with _example(world, method) as specs:
        path = specs / "spec.yaml"
        code, lines, _ = _validate(
            world, path, yaml.safe_dump({**base, "search_space": form.replace("{abs}", str(specs))})
        )
        assert (code, lines) == (0, [])
        spec = spec_module.load_spec(path)
        builtin = spec_module.parse_spec({**base, "search_space": method})
        assert spec.search_space == builtin.search_space
        assert Path(str(spec.search_space_ref)).is_absolute()


# -- numbers: refused exactly outside their documented bounds --------------------------------

S = spec_module
#: key path -> (low, high, integer?, low open?): the documented bounds.
BOUNDS: dict[tuple[str, ...], tuple[float, float, bool, bool]] = {
    ("seed",): (0, S.SEED_LIMIT - 1, True, False),
    ("trials",): (1, S.MAX_TRIALS, True, False),
    ("max_concurrent",): (1, S.MAX_CONCURRENT, True, False),
    ("dataset", "train_size"): (1, S.MAX_DATASET_SIZE, True, False),
    ("dataset", "val_size"): (1, S.MAX_DATASET_SIZE, True, False),
    ("training", "batch_size"): (1, S.MAX_BATCH_SIZE, True, False),
    ("training", "num_workers"): (0, S.MAX_NUM_WORKERS, True, False),
    ("evaluation", "overlay_images"): (0, S.MAX_OVERLAY_IMAGES, True, False),
    ("teacher", "epochs"): (1, S.MAX_EPOCHS, True, False),
    ("resources_per_trial", "cpu"): (0, S.MAX_RESOURCES, False, True),
    ("resources_per_trial", "gpu"): (0, S.MAX_RESOURCES, False, False),
    ("training", "lr"): (0, math.inf, False, True),
    ("training", "weight_decay"): (0, math.inf, False, False),
    ("training", "kd_temperature"): (0, math.inf, False, True),
    ("teacher", "lr"): (0, math.inf, False, True),
    ("training", "kd_alpha"): (0, 1, False, False),
}


def _inside(value: float, bounds: tuple[float, float, bool, bool]) -> bool:
    low, high, integer, low_open = bounds
    if integer and not isinstance(value, int):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    if not math.isfinite(number):
        return False
    return (low < value if low_open else low <= value) and value <= high


def _near(bounds: tuple[float, float, bool, bool]) -> st.SearchStrategy[float]:
    low, high, integer, _ = bounds
    edges = [low - 1, low, low + 1, high - 1, high, high + 1]
    if integer:
        return st.sampled_from([int(e) for e in edges if math.isfinite(e)]) | st.integers()
    finite = [e for e in edges if math.isfinite(e)]
    return st.sampled_from([*finite, math.inf, -math.inf, math.nan, 1e308, 10**90]) | st.floats()


@st.composite
def bounded_number(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...], float]:
    key = draw(st.sampled_from(sorted(BOUNDS)))
    bases = BASES
    if key in (("dataset", "train_size"), ("dataset", "val_size")):  # sizes of shapes only
        bases = tuple(b for b in BASES if b["dataset"].get("name", "shapes") == "shapes")
    data = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(bases))))
    value = draw(_near(BOUNDS[key]))
    _set(data, key, value)
    return data, key, value


@SETTINGS
@given(case=bounded_number())
def test_numbers_are_refused_exactly_outside_their_documented_bounds(
    world: Path, case: tuple[dict[str, Any], tuple[str, ...], float]
) -> None:
    data, key, value = case
    with _example(world, str(data.get("method", "distillation"))) as specs:
        code, lines, _ = _validate(world, specs / "spec.yaml", yaml.safe_dump(data))
    named = [line for line in lines if line.startswith(".".join(key) + ":")]
    if _inside(value, BOUNDS[key]):
        assert named == [], (value, lines)
    else:
        assert code == 2
        assert len(named) == 1, (value, lines)
        assert named[0].endswith(f", got {value!r}"), named
