"""``teacher.pretrained: true`` offline (#16): torchvision's ImageNet weights are one file in the
torch hub cache. Without it and without a way to download it, `apc validate` and `apc run` say
which file goes in which folder, exit 2 and write nothing; with it they ask nothing more.

Nothing here downloads: the cache is under tmp_path (TORCH_HOME), the download host a closed
port, and the state dicts are made from torchvision models built without weights."""

from __future__ import annotations

import hashlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch
import yaml
from torchvision.models import get_weight, vgg11_bn

import study.preflight
import study.runner
import trainables.models
from study.cli import main
from study.preflight import WEIGHTS_HOST, input_problems, preflight
from study.spec import parse_spec
from trainables.models import (
    ARCHITECTURES,
    WeightsFile,
    build_model,
    imagenet_weights_file,
    load_imagenet_weights,
)

CLOSED = ("127.0.0.1", 1)  # nothing listens on port 1
URL = "https://download.pytorch.org/models/vgg11_bn-6002323d.pth"
SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "shapes", "image_size": 32, "train_size": 16, "val_size": 8},
    "teacher": {"arch": "vgg11_bn", "width": 1, "pretrained": True, "epochs": 1},
    "trials": 2,
    "epochs": 1,
    "max_concurrent": 1,
}


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty torch hub cache in tmp_path, the download host a closed port, no proxy; work
    in tmp_path and fail loudly if a case gets as far as running the study."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(study.preflight, "WEIGHTS_HOST", CLOSED)
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the study must not start")

    monkeypatch.setattr(study.runner, "run_study", refuse)
    yield home
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def _apc(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> tuple[int, list[str]]:
    """``apc <command> spec.yaml`` on tmp_path's store and storage; asserts nothing is written."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    before = _tree(tmp_path)
    capsys.readouterr()
    if command == "run":
        store = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", "ray"]
        code = main(["run", str(spec), *store])
        prefix = "apc run: "
    else:
        code = main(["validate", str(spec)])
        prefix = f"{spec}: "
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert _tree(tmp_path) == before, "a refused spec must write nothing"
    lines = err.splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return code, [line.removeprefix(prefix) for line in lines]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_offline_without_the_weights_file_exits_2_naming_file_and_folder(
    torch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    folder = torch_home / "hub" / "checkpoints"
    code, lines = _apc(tmp_path, capsys, command)
    assert code == 2
    assert lines == [
        "teacher.pretrained: needs torchvision's ImageNet weights for vgg11_bn, got no file "
        f"{folder / 'vgg11_bn-6002323d.pth'} (offline: 127.0.0.1:1: connection refused; "
        f"download {URL} on a machine that is online and put it in {folder}, or set TORCH_HOME)"
    ]


def test_with_the_file_in_place_the_problem_is_gone_and_nothing_is_probed(
    torch_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file = imagenet_weights_file("vgg11_bn").path
    file.parent.mkdir(parents=True)
    file.write_bytes(b"not checked here")  # loading checks the SHA-256, preflight only the name
    probed: list[tuple[str, int]] = []
    monkeypatch.setattr(
        study.preflight, "_probe", lambda host, port, _t: probed.append((host, port))
    )
    code, lines = _apc(tmp_path, capsys, "validate")
    assert (code, lines) == (0, [])
    assert preflight(parse_spec(SPEC)) == []
    assert probed == []


def test_a_spec_without_pretrained_never_asks_for_the_weights(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probed: list[tuple[str, int]] = []
    monkeypatch.setattr(
        study.preflight, "_probe", lambda host, port, _t: probed.append((host, port))
    )
    spec = {**SPEC, "teacher": {"arch": "vgg11_bn", "width": 1, "epochs": 1}}
    assert input_problems(parse_spec(spec)) == []
    assert probed == []


def test_a_teacher_checkpoint_or_a_cached_teacher_needs_no_weights_file(
    torch_home: Path, tmp_path: Path
) -> None:
    """Loading a checkpoint or the cache replaces every weight: offline and without the file,
    preflight asks nothing and the teacher stage loads (no download is attempted)."""
    from study.plan import plan_study
    from study.teacher import prepare_teacher, teacher_key

    spec = parse_spec({**SPEC, "teacher": {**SPEC["teacher"], "epochs": 1}})
    plan = plan_study(spec)
    model = build_model("vgg11_bn", num_classes=plan.num_classes, image_size=32)
    cache = tmp_path / "teachers"
    cache.mkdir()
    torch.save(model.state_dict(), cache / f"teacher-{teacher_key(spec, precision='fp32')}.pt")
    cached = prepare_teacher(spec, plan=plan, cache_dir=cache)
    assert not cached.trained
    assert not imagenet_weights_file("vgg11_bn").path.exists()
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    given = parse_spec(
        {
            **SPEC,
            "teacher": {
                "arch": "vgg11_bn",
                "width": 1,
                "pretrained": True,
                "checkpoint": "teacher.pt",
            },
        },
        base_dir=tmp_path,
    )
    assert input_problems(given) == []
    loaded = prepare_teacher(given, plan=plan_study(given), cache_dir=tmp_path / "none")
    assert torch.equal(loaded.state["features.0.weight"], model.state_dict()["features.0.weight"])


def test_the_weights_problem_comes_with_the_other_input_problems(torch_home: Path) -> None:
    spec = parse_spec({**SPEC, "dataset": {"name": "voc2012", "root": "nowhere", "image_size": 32}})
    problems = input_problems(spec)
    assert [p.partition(":")[0] for p in problems] == ["dataset.root", "teacher.pretrained"]


def test_behind_an_https_proxy_the_proxy_is_probed(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.hub downloads through urllib, which uses https_proxy: a proxied cluster whose
    proxy answers is online though the download host itself is not reachable directly."""
    spec = parse_spec(SPEC)
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert input_problems(spec) == []
        monkeypatch.setenv("no_proxy", "127.0.0.1")  # the host bypasses the proxy: asked itself
        assert [p.partition(" (")[2].partition(";")[0] for p in input_problems(spec)] == [
            "offline: 127.0.0.1:1: connection refused"
        ]
    monkeypatch.delenv("no_proxy")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:1")
    monkeypatch.setattr(study.preflight, "WEIGHTS_HOST", ("127.0.0.1", 2))
    assert "(offline: proxy 127.0.0.1:1: connection refused; " in input_problems(spec)[0]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_file_is_torchvisions_url_basename_under_torch_home(
    torch_home: Path, arch: str
) -> None:
    url = get_weight(f"{ARCHITECTURES[arch].weights}.IMAGENET1K_V1").url
    weights = imagenet_weights_file(arch)
    assert weights == WeightsFile(path=torch_home / "hub" / "checkpoints" / Path(url).name, url=url)
    assert weights.path == Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port or 443) == ("https", *WEIGHTS_HOST)
    assert not torch_home.exists(), "naming the file creates nothing"


@pytest.fixture(scope="module")
def torchvision_state() -> dict[str, torch.Tensor]:
    """A state dict in torchvision's ImageNet layout, from a vgg11_bn built without weights."""
    torch.manual_seed(1)
    return {k: v.detach().clone() for k, v in vgg11_bn(weights=None).state_dict().items()}


def test_load_imagenet_weights_copies_all_but_the_head(
    torchvision_state: dict[str, torch.Tensor],
) -> None:
    model = build_model("vgg11_bn", num_classes=3, image_size=32)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("classifier.")}
    load_imagenet_weights(model, "vgg11_bn", state_dict=torchvision_state)
    loaded = model.state_dict()
    body = [k for k in torchvision_state if not k.startswith("classifier.")]
    assert body
    assert all(torch.equal(loaded[k], torchvision_state[k]) for k in body)
    assert set(loaded) == set(body) | set(head)
    assert all(torch.equal(loaded[k], v) for k, v in head.items()), "the head keeps its init"


def test_load_imagenet_weights_reads_the_cached_file_and_checks_its_hash(
    torchvision_state: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {k: v for k, v in torchvision_state.items() if not k.startswith("classifier.")}
    saved = tmp_path / "saved.pth"
    torch.save(body, saved)
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    cached = tmp_path / "checkpoints" / f"vgg11_bn-{digest[:8]}.pth"
    cached.parent.mkdir()
    saved.rename(cached)
    offline = f"http://127.0.0.1:1/{cached.name}"  # never fetched: the file is there
    monkeypatch.setattr(
        trainables.models, "imagenet_weights_file", lambda arch: WeightsFile(cached, offline)
    )
    model = build_model("vgg11_bn", num_classes=3, image_size=32)
    load_imagenet_weights(model, "vgg11_bn")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())

    wrong = cached.with_name("vgg11_bn-00000000.pth")
    cached.rename(wrong)
    monkeypatch.setattr(
        trainables.models, "imagenet_weights_file", lambda arch: WeightsFile(wrong, offline)
    )
    with pytest.raises(RuntimeError, match=f"whose SHA-256 starts {digest[:8]}, not 00000000"):
        load_imagenet_weights(model, "vgg11_bn")

    wrong.unlink()
    with pytest.raises(RuntimeError) as error:
        load_imagenet_weights(model, "vgg11_bn")
    assert str(error.value).startswith(
        f"pretrained: needs torchvision's ImageNet weights for vgg11_bn, got no file {wrong} "
        "(download failed: "
    )
    assert str(error.value).endswith(
        f"; download {offline} on a machine that is online and put it in {wrong.parent}, or set "
        "TORCH_HOME)"
    )
