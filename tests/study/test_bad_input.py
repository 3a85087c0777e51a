"""Bad input, tried as a new user would: `apc run` (and `apc validate`) answer each problem with
one message on stderr, exit 2, no traceback, and write nothing: no MLflow store or experiment,
no Ray storage, no teacher cache. No case trains or starts Ray or MLflow."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

import study.runner
from study.cli import main
from study.preflight import preflight
from study.spec import parse_spec

BASE: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "shapes", "image_size": 32, "train_size": 16, "val_size": 8},
    "teacher": {"epochs": 1},
    "trials": 2,
    "epochs": 1,
    "max_concurrent": 1,
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Work in tmp_path, and fail loudly if a case ever gets as far as running the study."""
    monkeypatch.chdir(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input reached run_study")

    monkeypatch.setattr(study.runner, "run_study", refuse)
    yield
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def _spec(tmp_path: Path, spec: dict[str, Any] | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def _with(**changes: Any) -> dict[str, Any]:
    spec = {**BASE, **changes}
    return {k: v for k, v in spec.items() if v is not None}


def _apc(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    spec: dict[str, Any] | str,
    *extra: str,
) -> tuple[int, list[str]]:
    """Run ``apc <command> SPEC`` on tmp_path's store and storage; assert nothing was written."""
    path = _spec(tmp_path, spec)
    before = _tree(tmp_path)
    capsys.readouterr()  # what the case's own setup printed
    if command == "run":
        argv = [
            "run",
            str(path),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--storage",
            f"{tmp_path}/ray",
            *extra,
        ]
    else:
        argv = ["validate", str(path)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    assert _tree(tmp_path) == before, "bad input must write nothing"
    prefix = "apc run: " if command == "run" else f"{path}: "
    lines = err.splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return code, [line.removeprefix(prefix) for line in lines]


def _assert_messages(lines: list[str], expected: list[str]) -> None:
    """One line per expected problem, each starting with its expected text, in any order."""
    assert len(lines) == len(expected), lines
    for text in expected:
        assert any(line.startswith(text) for line in lines), (text, lines)


# -- a-d: problems of the spec itself, reported by `apc run` and `apc validate` alike ---------

SPEC_CASES: dict[str, tuple[dict[str, Any] | str, list[str]]] = {
    "yaml-syntax": (
        "name: tiny\ndataset: {name: shapes, image_size: 32\ntrials: 2\n",
        [
            "spec: {spec} is not valid YAML at line 3, column 7: expected ',' or '}', but got "
            "':' (while parsing a flow mapping at line 2, column 10)"
        ],
    ),
    "yaml-tab": (
        "name: tiny\n\ttrials: 2\n",
        ["spec: {spec} is not valid YAML at line 2, column 1: found character '\\t'"],
    ),
    "yaml-duplicate-key": (
        "name: tiny\nepochs: 2\ntrials: 2\nepochs: 30\n",
        [
            "spec: {spec} is not valid YAML at line 4, column 1: found duplicate key 'epochs' "
            "(YAML would keep only the last value; the first is at line 2, column 1)"
        ],
    ),
    "unknown-keys": (
        _with(tirals=3, dataset={"name": "shapes", "image_sise": 32}, teacher={"epocs": 1}),
        [
            "tirals: unknown key (did you mean 'trials'?)",
            "dataset.image_sise: unknown key (did you mean 'image_size'?)",
            "teacher.epocs: unknown key (did you mean 'epochs'?)",
        ],
    ),
    "unknown-search-parameter": (
        _with(
            search_space={
                "parameters": {
                    "matching": {"type": "categorical", "choices": ["none", "sswa"]},
                    "dropp": {"type": "uniform", "low": 0.1, "high": 0.3},
                }
            }
        ),
        [
            "search_space.parameters.dropp: unknown parameter of distillation "
            "(did you mean 'drop_p'?)"
        ],
    ),
    "wrong-types": (
        _with(
            trials="two",
            epochs=1.5,
            teacher={"width": "4", "lr": "0.1"},
            enqueue={"matching": "none"},
        ),
        [
            "trials: must be an integer in [1, 100000], got 'two'",
            "epochs: must be an integer in [1, 10000], got 1.5",
            "teacher.width: must be one of [1, 2, 4, 8, 16, 32], got '4'",
            "teacher.lr: must be a finite number > 0, got '0.1'",
            "enqueue: must be a list of parameter mappings, got {'matching': 'none'}",
        ],
    ),
    "drop_p-range-reaches-1": (
        _with(
            search_space={
                "parameters": {
                    "matching": {"type": "categorical", "choices": ["none", "sswa"]},
                    "drop_p": {
                        "type": "uniform",
                        "low": 0.1,
                        "high": 1.0,
                        "when": {"matching": ["sswa"]},
                    },
                }
            },
            enqueue=[{"matching": "sswa", "drop_p": 1.0}],
        ),
        [
            "search_space.parameters.drop_p.high: must be a number in [0, 1), got 1.0",
            "enqueue[0].drop_p: must be a number in [0, 1), got 1.0",
        ],
    ),
    "drop_p-enqueued-outside-the-built-in-space": (
        _with(enqueue=[{"matching": "sswa", "beta": 1.0, "drop_p": 1.5}]),
        ["enqueue[0].drop_p: must be in [0.05, 0.6], got 1.5"],
    ),
    "drop_p-without-sswa": (
        _with(
            search_space={
                "parameters": {
                    "matching": {"type": "categorical", "choices": ["none", "swa", "sswa"]},
                    "drop_p": {"type": "uniform", "low": 0.1, "high": 0.5},
                }
            }
        ),
        [
            "search_space.parameters.drop_p.when: must limit drop_p to matching: [sswa] (only "
            "SSWA drops channels), got drop_p with matching ['none', 'swa']"
        ],
    ),
    "prune_rate-outside-0-1": (
        _with(
            method="structured_pruning",
            search_space={
                "parameters": {"prune_rate": {"type": "uniform", "low": 0.0, "high": 1.2}}
            },
            enqueue=[{"prune_rate": 1.0}],
        ),
        [
            "search_space.parameters.prune_rate.low: must be a number in (0, 1), got 0.0",
            "search_space.parameters.prune_rate.high: must be a number in (0, 1), got 1.2",
            "enqueue[0].prune_rate: must be a number in (0, 1), got 1.0",
        ],
    ),
    "prune_rate-missing": (
        _with(method="structured_pruning", search_space="distillation"),
        [
            "search_space.parameters.student_width: unknown parameter of structured_pruning "
            "(valid: matching, beta, drop_p, prune_rate)",
            "search_space.parameters.prune_rate: is required by structured_pruning, got nothing",
        ],
    ),
    "student-too-narrow-for-the-teacher": (
        _with(teacher={"width": 8, "epochs": 1}),
        [
            "search_space.parameters.student_width.choices: must be one of [1, 2, 4] "
            "(teacher.width 8 times student_width must be a width divisor, at most 32), got 8"
        ],
    ),
    "zero-and-negative-epochs": (
        _with(epochs=0, teacher={"epochs": -1}),
        [
            "epochs: must be an integer in [1, 10000], got 0",
            "teacher.epochs: must be an integer in [1, 10000], got -1",
        ],
    ),
    "missing-voc-root": (
        _with(dataset={"name": "voc2012", "root": "nowhere/VOC", "image_size": 32}),
        ["dataset.root: must be an existing folder, got 'nowhere/VOC'"],
    ),
    "missing-imagefolder-root": (
        _with(dataset={"name": "imagefolder", "root": "/nonexistent/images"}),
        ["dataset.root: must be an existing folder, got '/nonexistent/images'"],
    ),
    "missing-checkpoint": (
        _with(teacher={"checkpoint": "teacher.pt"}),
        ["teacher.checkpoint: must be an existing file, got 'teacher.pt'"],
    ),
    # -- #14: what users actually type --
    "missing-space-file-in-a-folder": (  # crashed: ValueError: Invalid name '...yaml.yaml'
        _with(search_space="spaces/kd.yaml"),
        [
            "search_space: must be an existing YAML file or a built-in space (distillation, "
            "quantization, structured_pruning, unstructured_pruning), got 'spaces/kd.yaml' (no "
            "file "
        ],
    ),
    "non-finite-numbers": (  # cpu .inf passed, then OverflowError in `apc run`
        _with(
            resources_per_trial={"cpu": math.inf, "gpu": math.nan},
            training={"lr": math.inf, "weight_decay": math.inf, "kd_temperature": math.inf},
            teacher={"epochs": 1, "lr": math.inf},
        ),
        [
            "resources_per_trial.cpu: must be a number in (0, 1024], got inf",
            "resources_per_trial.gpu: must be a number in [0, 1024], got nan",
            "training.lr: must be a finite number > 0, got inf",
            "training.weight_decay: must be a finite number >= 0, got inf",
            "training.kd_temperature: must be a finite number > 0, got inf",
            "teacher.lr: must be a finite number > 0, got inf",
        ],
    ),
    "numbers-beyond-their-caps": (  # seed 2**32 failed inside Optuna; the rest had no bound
        _with(
            seed=2**32,
            trials=100_001,
            epochs=10_001,
            dataset={"name": "shapes", "image_size": 4097},
            training={"batch_size": 65_537, "num_workers": 257},
            evaluation={"overlay_images": 1001},
        ),
        [
            "seed: must be an integer in [0, 4294967295], got 4294967296",
            "trials: must be an integer in [1, 100000], got 100001",
            "epochs: must be an integer in [1, 10000], got 10001",
            "dataset.image_size: must be an integer in [7, 4096], got 4097",
            "training.batch_size: must be an integer in [1, 65536], got 65537",
            "training.num_workers: must be an integer in [0, 256] or 'auto', got 257",
            "evaluation.overlay_images: must be an integer in [0, 1000], got 1001",
        ],
    ),
    "name-with-a-newline": (  # passed: the name was matched with `match`, not `fullmatch`
        _with(name="tiny\n"),
        [
            "name: must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or "
            "digit, got 'tiny\\n'"
        ],
    ),
    "yaml-aliases-of-aliases": (  # 1 KB that expanded to gigabytes
        "name: tiny\na0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 8)),
        [
            "spec: {spec} must hold at most 100000 values with its aliases (*name) expanded, got "
            "more at line 7, column 5"
        ],
    ),
    "spec-over-1-mib": (
        "name: tiny\n#" + "x" * (1 << 20) + "\n",
        ["spec: {spec} must be at most 1048576 bytes (1 MiB) of YAML, got 1048589 bytes"],
    ),
}


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_spec_problems_exit_2_with_one_message_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, case: str
) -> None:
    spec, expected = SPEC_CASES[case]
    code, lines = _apc(tmp_path, capsys, command, spec)
    assert code == 2
    _assert_messages(lines, [e.replace("{spec}", str(tmp_path / "spec.yaml")) for e in expected])


def test_every_problem_of_a_new_users_spec_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _with(tirals=3, epochs=-1, enqueue=[{"matching": "sswa", "drop_p": 1.0}])
    code, lines = _apc(tmp_path, capsys, "run", spec, "--ray-address", "127.0.0.1:1")
    assert code == 2
    _assert_messages(
        lines,
        [
            "tirals: unknown key (did you mean 'trials'?)",
            "epochs: must be an integer in [1, 10000], got -1",
            "enqueue[0].drop_p: must be in [0.05, 0.6], got 1.0",
        ],
    )  # the spec's problems first; the world is asked about a valid spec only


def test_apc_run_takes_a_space_file_in_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`search_space: spaces/kd.yaml` crashed `apc run` before it was read; now the spec is
    valid and `apc run` goes on to ask the world (here a Ray address that does not answer)."""
    (tmp_path / "spaces").mkdir()
    builtin = Path(study.runner.__file__).parents[1] / "search_spaces" / "distillation.yaml"
    (tmp_path / "spaces" / "kd.yaml").write_text(builtin.read_text())
    spec = _with(search_space="spaces/kd.yaml")
    code, lines = _apc(tmp_path, capsys, "run", spec, "--ray-address", "127.0.0.1:1")
    assert code == 2
    _assert_messages(lines, ["ray_address: must be a running Ray cluster's address"])


# -- e: data sets ----------------------------------------------------------------------------

IDS = ("2008_000001", "2008_000002")


def _voc(root: Path) -> Path:
    """A two-image VOC 2012 tree (a dog in each), every split listing both images."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in (
        "JPEGImages",
        "Annotations",
        "SegmentationClass",
        "ImageSets/Main",
        "ImageSets/Segmentation",
    ):
        (voc / folder).mkdir(parents=True)
    for image_id in IDS:
        Image.new("RGB", (40, 30), (120, 30, 200)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            "<annotation><object><name>dog</name><difficult>0</difficult></object></annotation>"
        )
        Image.new("P", (40, 30), 12).save(voc / "SegmentationClass" / f"{image_id}.png")
    for split in ("Main/train.txt", "Main/val.txt", "Segmentation/val.txt"):
        (voc / "ImageSets" / split).write_text("\n".join(IDS) + "\n")
    return voc


def _voc_spec(root: Path) -> dict[str, Any]:
    return _with(dataset={"name": "voc2012", "root": str(root), "image_size": 32})


def test_a_sound_voc_tree_passes_preflight(tmp_path: Path) -> None:
    _voc(tmp_path / "data")
    assert preflight(parse_spec(_voc_spec(tmp_path / "data"))) == []


def test_voc_root_without_its_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    code, lines = _apc(tmp_path, capsys, "run", _voc_spec(tmp_path / "data"))
    assert code == 2
    _assert_messages(
        lines,
        [
            f"dataset.root: must hold the voc2012 data set, got '{tmp_path / 'data'}' (VOC folder "
            f"not found: {tmp_path}/data/VOCdevkit/VOC2012; expected layout:"
        ],
    )


def test_voc_split_naming_a_missing_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc = _voc(tmp_path / "data")
    (voc / "ImageSets/Main/train.txt").write_text("\n".join([*IDS, "2008_000009"]) + "\n")
    code, lines = _apc(tmp_path, capsys, "run", _voc_spec(tmp_path / "data"))
    assert code == 2
    _assert_messages(
        lines,
        [
            f"dataset.root: must hold every file its split lists, got '{tmp_path / 'data'}' "
            "(1 of 3 ids listed in ImageSets/Main/train.txt lack JPEGImages/<id>.jpg, "
            "e.g. 2008_000009)",
            f"dataset.root: must hold every file its split lists, got '{tmp_path / 'data'}' "
            "(1 of 3 ids listed in ImageSets/Main/train.txt lack Annotations/<id>.xml, "
            "e.g. 2008_000009)",
        ],
    )


def test_voc_garbage_jpeg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = _voc(tmp_path / "data")
    image = voc / "JPEGImages" / f"{IDS[0]}.jpg"
    image.write_bytes(b"\xff\xd8 not a JPEG at all")
    code, lines = _apc(tmp_path, capsys, "run", _voc_spec(tmp_path / "data"))
    assert code == 2
    _assert_messages(  # both splits start with that image: one problem, one message
        lines,
        [
            f"dataset.root: must hold readable samples, got '{tmp_path / 'data'}' (the first "
            f"sample of a split: cannot identify image file '{image}')"
        ],
    )


def test_voc_option_of_the_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _voc(tmp_path / "data")
    spec = _voc_spec(tmp_path / "data")
    spec["dataset"]["options"] = {"include_difficult": "yes"}
    code, lines = _apc(tmp_path, capsys, "run", spec)
    assert code == 2
    _assert_messages(lines, ["dataset.options.include_difficult: must be true or false, got 'yes'"])


def _image_folder(root: Path, classes: dict[str, tuple[str, ...]]) -> None:
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 20), (10, 200, 30)).save(root / split / name / "a.png")


def test_image_folder_garbage_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image_folder(tmp_path / "data", {"train": ("cat", "dog"), "val": ("cat", "dog")})
    bad = tmp_path / "data" / "train" / "cat" / "a.png"
    bad.write_bytes(random.Random(0).randbytes(64))
    spec = _with(dataset={"name": "imagefolder", "root": "data", "image_size": 32})
    code, lines = _apc(tmp_path, capsys, "run", spec)
    assert code == 2
    _assert_messages(
        lines,
        [
            f"dataset.root: must hold readable samples, got '{tmp_path / 'data'}' (the first "
            f"sample of a split: cannot identify image file '{bad}')"
        ],
    )


def test_image_folder_splits_with_other_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _image_folder(tmp_path / "data", {"train": ("cat", "dog"), "val": ("cat",)})
    spec = _with(dataset={"name": "imagefolder", "root": "data", "image_size": 32})
    code, lines = _apc(tmp_path, capsys, "run", spec)
    assert code == 2
    _assert_messages(
        lines,
        [
            "dataset.options.classes: is required when the splits' class folders differ, got "
            "train ['cat', 'dog'] and val ['cat']"
        ],
    )


def test_image_folder_without_its_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image_folder(tmp_path / "data", {"train": ("cat", "dog")})
    spec = _with(dataset={"name": "imagefolder", "root": "data", "image_size": 32})
    code, lines = _apc(tmp_path, capsys, "run", spec)
    assert code == 2
    _assert_messages(
        lines,
        [
            f"dataset.root: must hold the imagefolder data set, got '{tmp_path / 'data'}' "
            f"(image folder split not found: {tmp_path / 'data' / 'val'}; expected layout:"
        ],
    )


# -- f: teacher checkpoints ------------------------------------------------------------------


def _teacher_spec() -> dict[str, Any]:
    return _with(teacher={"arch": "vgg11_bn", "width": 4, "checkpoint": "teacher.pt"})


def _shapes_classes() -> int:
    from trainables.data import ShapesDataset

    return ShapesDataset("val", size=1, image_size=32).num_classes


class _Payload:
    """Unpickling this object runs ``exec``, which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_the_code_payload_is_live(tmp_path: Path) -> None:
    """The payload the next test feeds `apc` does run when loaded unsafely (else that test
    would prove nothing)."""
    import pickle

    marker = tmp_path / "unsafe-load-ran"
    pickle.loads(pickle.dumps(_Payload(marker)))  # unsafe on purpose
    assert marker.exists()


@pytest.mark.parametrize("command", ["run", "validate"])
def test_checkpoint_carrying_code_is_refused_and_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    marker = tmp_path / "unsafe-load-ran"
    torch.save({"features.0.weight": _Payload(marker)}, tmp_path / "teacher.pt")
    code, lines = _apc(tmp_path, capsys, command, _teacher_spec())
    assert code == 2
    assert not marker.exists(), "the checkpoint's code ran"
    _assert_messages(
        lines,
        [
            "teacher.checkpoint: must be a PyTorch state dict (parameter names -> tensors) saved "
            "with torch.save, got 'teacher.pt' (it calls exec: a pickle that may run code, "
            "refused by torch.load(weights_only=True) and not loaded)"
        ],
    )


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (random.Random(0).randbytes(256), "(unreadable: "),
        (b"", "(unreadable: empty or truncated file)"),
        ([torch.zeros(2)], "(it holds a list)"),
        (
            {"model": {"w": torch.zeros(1)}, "epoch": 3},
            "(it holds a mapping with keys model, epoch; save model.state_dict() alone)",
        ),
    ],
    ids=["random-bytes", "empty", "a-list", "a-training-checkpoint"],
)
def test_corrupt_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, detail: str
) -> None:
    if isinstance(content, bytes):
        (tmp_path / "teacher.pt").write_bytes(content)
    else:
        torch.save(content, tmp_path / "teacher.pt")
    code, lines = _apc(tmp_path, capsys, "run", _teacher_spec())
    assert code == 2
    _assert_messages(
        lines,
        [
            "teacher.checkpoint: must be a PyTorch state dict (parameter names -> tensors) saved "
            f"with torch.save, got 'teacher.pt' {detail}"
        ],
    )


def test_checkpoint_of_another_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainables.models import build_model

    classes = _shapes_classes()
    other = build_model("vgg11_bn", num_classes=classes, image_size=32, width_divisor=8)
    torch.save(other.state_dict(), tmp_path / "teacher.pt")
    code, lines = _apc(tmp_path, capsys, "run", _teacher_spec())
    assert code == 2
    _assert_messages(
        lines,
        [
            f"teacher.checkpoint: must hold the parameters of teacher.arch vgg11_bn at "
            f"teacher.width 4 with {classes} classes, got '{tmp_path / 'teacher.pt'}' "
            "(53 of another shape, e.g. 'features.0.weight' [8, 3, 3, 3] where [16, 3, 3, 3] "
            "is expected)"
        ],
    )


def test_a_fitting_checkpoint_passes(tmp_path: Path) -> None:
    from trainables.models import build_model

    model = build_model("vgg11_bn", num_classes=_shapes_classes(), image_size=32, width_divisor=4)
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    spec = parse_spec(_teacher_spec(), base_dir=tmp_path)
    assert preflight(spec) == []


# -- g: services that do not answer, and places that cannot be written ------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--tracking-uri", "http://127.0.0.1:1"],
            "tracking_uri: must be reachable, got 'http://127.0.0.1:1' (127.0.0.1:1: "
            "connection refused)",
        ),
        (
            ["--tracking-uri", "sqlite:///{tmp}/no/such/folder/mlflow.db"],
            "tracking_uri: must name an SQLite file in an existing, writable folder, got "
            "'sqlite:///{tmp}/no/such/folder/mlflow.db' (no folder {tmp}/no/such/folder)",
        ),
        (
            ["--tracking-uri", "sqlite:///{tmp}/spec.yaml"],
            "tracking_uri: must name an SQLite file in an existing, writable folder, got "
            "'sqlite:///{tmp}/spec.yaml' ({tmp}/spec.yaml is not an SQLite database)",
        ),
        (
            ["--ray-address", "127.0.0.1:1"],
            "ray_address: must be a running Ray cluster's address, got '127.0.0.1:1' "
            "(127.0.0.1:1: connection refused)",
        ),
        (
            ["--ray-address", "ray://127.0.0.1:1"],
            "ray_address: must be a running Ray cluster's address, got 'ray://127.0.0.1:1' "
            "(127.0.0.1:1: connection refused)",
        ),
        (
            ["--storage", "{tmp}/spec.yaml/results"],
            "storage_path: must be a folder that can be created ({tmp}/spec.yaml is a file), "
            "got '{tmp}/spec.yaml/results'",
        ),
    ],
    ids=[
        "http-refused",
        "sqlite-no-folder",
        "sqlite-not-a-db",
        "ray-refused",
        "ray-client",
        "storage-under-a-file",
    ],
)
def test_unreachable_services_and_unwritable_places(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    code, lines = _apc(tmp_path, capsys, "run", BASE, *extra)
    assert code == 2
    _assert_messages(lines, [expected.replace("{tmp}", str(tmp_path))])


def test_probe_gives_up_after_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from study import preflight as module

    waited: list[float] = []

    def silent(address: tuple[str, int], timeout: float) -> None:
        waited.append(timeout)
        raise TimeoutError

    monkeypatch.setattr(socket, "create_connection", silent)
    spec = parse_spec({**BASE, "ray_address": "10.1.2.3:6379"})
    assert module.preflight(spec, timeout_s=0.5) == [
        "ray_address: must be a running Ray cluster's address, got '10.1.2.3:6379' "
        "(no answer from 10.1.2.3:6379 within 0.5 s)"
    ]
    assert waited == [0.5]


@pytest.mark.parametrize("address", [None, "auto", "local"])
def test_local_ray_is_not_probed(monkeypatch: pytest.MonkeyPatch, address: str | None) -> None:
    import socket

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("probed")

    monkeypatch.setattr(socket, "create_connection", never)
    assert preflight(parse_spec({**BASE, "ray_address": address})) == []


# -- h: a study name already taken -----------------------------------------------------------


def test_existing_study_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tiny")
    parent = client.create_run(experiment, run_name="tiny", tags={"apc.role": "study"})
    client.create_run(
        experiment,
        run_name="trial_0",
        tags={"apc.role": "trial", "mlflow.parentRunId": parent.info.run_id},
    )
    code, lines = _apc(tmp_path, capsys, "run", BASE)
    assert code == 2
    _assert_messages(
        lines,
        [
            f"name: study 'tiny' already exists in {uri} and has run trials; finish it with "
            f"`apc resume tiny --tracking-uri {uri}`, or choose another --name"
        ],
    )
    assert len(client.search_runs([experiment])) == 2
    assert [e.name for e in client.search_experiments()] == ["tiny", "Default"]


# -- apc resume: a study that cannot be resumed ---------------------------------------------


def _resume(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main(["resume", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err + out
    assert _tree(tmp_path) == before, "bad input must write nothing"
    lines = err.splitlines()
    assert all(line.startswith("apc resume: ") for line in lines), lines
    return [line.removeprefix("apc resume: ") for line in lines]


def test_resume_of_an_unknown_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    lines = _resume(tmp_path, capsys, "nosuch", "--tracking-uri", uri)
    _assert_messages(lines, [f"name: no study 'nosuch' in {uri}"])


def test_resume_from_an_unreachable_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _resume(tmp_path, capsys, "tiny", "--tracking-uri", "http://127.0.0.1:1")
    _assert_messages(lines, ["--tracking-uri: must be reachable, got 'http://127.0.0.1:1'"])


def test_resume_of_a_study_without_tune_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The driver died before Tune started: there is nothing to restore, and it says so."""
    from mlflow.tracking import MlflowClient

    from study.runner import effective_spec_text
    from study.tracking import EFFECTIVE_SPEC_FILE

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tiny")
    run = client.create_run(experiment, run_name="tiny", tags={"apc.role": "study"})
    spec = {**BASE, "storage_path": str(tmp_path / "ray")}
    client.log_text(
        run.info.run_id, effective_spec_text(spec, base_dir=tmp_path), EFFECTIVE_SPEC_FILE
    )
    lines = _resume(tmp_path, capsys, "tiny", "--tracking-uri", uri)
    _assert_messages(
        lines, [f"name: study 'tiny' has no Tune state in {tmp_path}/ray/tiny to resume"]
    )
    assert client.get_run(run.info.run_id).info.status == "RUNNING"


def test_a_study_whose_space_was_a_file_can_be_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every study that used a search-space file could not be resumed: its effective spec
    named the file by its absolute path, which `apc resume` took for a built-in name."""
    from mlflow.tracking import MlflowClient

    from study.runner import effective_spec_text, load_study_spec
    from study.spec import load_spec
    from study.tracking import EFFECTIVE_SPEC_FILE

    (tmp_path / "specs" / "spaces").mkdir(parents=True)
    space = "parameters:\n  matching: {type: categorical, choices: [none, ewa]}\n"
    (tmp_path / "specs" / "spaces" / "kd.yaml").write_text(space)
    data = {**BASE, "search_space": "spaces/kd.yaml", "storage_path": str(tmp_path / "ray")}
    ran = load_spec(_spec(tmp_path / "specs", data))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("tiny"), tags={"apc.role": "study"})
    effective = effective_spec_text(data, base_dir=tmp_path / "specs")
    client.log_text(run.info.run_id, effective, EFFECTIVE_SPEC_FILE)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec, parent = load_study_spec("tiny", tracking_uri=uri)  # what `apc resume` reads
    assert parent == run.info.run_id
    assert spec.search_space == ran.search_space
    assert spec.search_space.names == ("matching",)
