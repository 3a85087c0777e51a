"""The paper's presets (docs/paper.md): they validate as shipped, name what a user lacks, and a
shrunk variant of each runs end to end (`apc run` -> `apc report`) on a generated VOC tree.

Shrunk means only sizes, widths and epochs moved with ``--set``: the method, its options, the
enqueued settings, the betas, the optimiser and the official evaluation protocol are the
preset's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.cli import main
from study.preflight import input_problems
from study.presets import PRESETS_DIR
from study.spec import load_spec
from trainables.models import imagenet_weights_file

PAPER_PRESETS = sorted(PRESETS_DIR.glob("paper_*.yaml"))
#: What shrinks a paper preset to seconds on a CPU: a VGG16_bn/4 teacher at 64 px with random
#: initial weights (ImageNet weights need width 1; the KD students are then /8), one epoch
#: everywhere, one loader process, no GPU.
SHRUNK = (
    "dataset.image_size=64",
    "teacher.pretrained=false",
    "teacher.width=4",
    "teacher.epochs=1",
    "epochs=1",
    "training.batch_size=16",
    "training.num_workers=0",
    "resources_per_trial={cpu: 1, gpu: 0}",
    "max_concurrent=1",
    "evaluation.overlay_images=2",
)


def test_there_is_one_paper_preset_per_experiment() -> None:
    methods = {yaml.safe_load(p.read_text())["method"]: p.name for p in PAPER_PRESETS}
    assert methods == {
        "distillation": "paper_kd.yaml",
        "structured_pruning": "paper_structured_pruning.yaml",
        "unstructured_pruning": "paper_unstructured_pruning.yaml",
    }


@pytest.mark.parametrize("preset", PAPER_PRESETS, ids=lambda p: p.stem)
def test_paper_presets_hold_the_papers_settings(preset: Path) -> None:
    spec = load_spec(preset)
    assert spec.dataset.name == "voc2012"
    assert spec.dataset.image_size == 227
    assert (spec.teacher.arch, spec.teacher.width, spec.teacher.pretrained) == ("vgg16_bn", 1, True)
    assert spec.training.optimization.optimizer == "sgd"
    assert spec.training.optimization.momentum == 0.9
    assert spec.training.batch_size == 64
    assert spec.evaluation.protocol == "official"
    betas = {point["matching"]: point.get("beta") for point in spec.enqueue}
    assert betas == {"none": None, "ewa": 2.0, "swa": 1.0, "sswa": 1.0}  # 100 and 50, paper units
    assert {point.get("drop_p") for point in spec.enqueue if point["matching"] == "sswa"} == {0.3}
    assert len(spec.enqueue) == spec.trials  # every trial is one of the paper's settings
    epochs = {"distillation": 350, "structured_pruning": 60, "unstructured_pruning": 16 * 30}
    assert spec.epochs == epochs[spec.method]


@pytest.mark.parametrize("preset", PAPER_PRESETS, ids=lambda p: p.stem)
def test_without_the_data_and_the_weights_each_is_named(
    preset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Valid as shipped; on a machine with neither ~/data nor the ImageNet weights (offline),
    `apc validate` names both, with where to put them."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["validate", str(preset)]) == 2
    lines = capsys.readouterr().err.splitlines()
    weights = imagenet_weights_file("vgg16_bn")
    assert [line.removeprefix(f"{preset}: ").partition(" (")[0] for line in lines] == [
        "dataset.root: must be an existing folder, got '~/data'",
        "teacher.pretrained: needs torchvision's ImageNet weights for vgg16_bn, got no file "
        f"{weights.path}",
    ]
    assert str(weights.path.parent) in lines[1]
    assert weights.url in lines[1]


@pytest.mark.parametrize("preset", PAPER_PRESETS, ids=lambda p: p.stem)
def test_with_the_data_and_the_weights_in_place_each_validates(
    preset: Path, voc2012_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = imagenet_weights_file("vgg16_bn").path
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"")  # preflight asks whether it is there; loading checks its hash
    data = yaml.safe_load(preset.read_text())
    data["dataset"]["root"] = str(voc2012_tree)
    copy = tmp_path / preset.name
    copy.write_text(yaml.safe_dump(data))
    assert main(["validate", str(copy)]) == 0, capsys.readouterr().err
    assert input_problems(load_spec(copy)) == []


# -- shrunk end to end ----------------------------------------------------------------------


def _trials(uri: str, name: str) -> list[object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`apc.role` = 'trial'")
    return list(runs)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("preset", "settings", "extra"),
    [
        ("paper_kd.yaml", (0, 1), ()),  # naive and EWA at /2
        ("paper_structured_pruning.yaml", (2,), ()),  # SWA
        ("paper_unstructured_pruning.yaml", (3,), ("method_options.steps=1",)),  # SSWA
    ],
)
def test_a_shrunk_variant_runs_end_to_end_on_a_voc_tree(
    preset: str,
    settings: tuple[int, ...],
    extra: tuple[str, ...],
    local_store: tuple[str, Path],
    voc2012_tree: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, root = local_store
    monkeypatch.chdir(root)  # MLflow puts a new experiment's artifacts under ./mlruns
    name = preset.removesuffix(".yaml")
    enqueue = [yaml.safe_load((PRESETS_DIR / preset).read_text())["enqueue"][i] for i in settings]
    trials = len(enqueue)
    sets = (
        f"dataset.root={voc2012_tree}",
        f"enqueue={yaml.safe_dump(enqueue, default_flow_style=True).strip()}",
        *SHRUNK,
        *extra,
    )
    args = ["run", str(PRESETS_DIR / preset), "--name", name, "--trials", str(trials)]
    args += ["--tracking-uri", uri, "--storage", str(root / "results")]
    assert main([*args, *(a for s in sets for a in ("--set", s))]) == 0, capsys.readouterr().err
    runs = _trials(uri, name)
    assert len(runs) == trials
    for run in runs:
        assert run.info.status == "FINISHED"  # type: ignore[attr-defined]
        metrics = run.data.metrics  # type: ignore[attr-defined]
        assert 0 <= metrics["map"] <= 100
        assert 0 <= metrics["attr_auc"] <= 100
    capsys.readouterr()
    out = root / f"report-{name}"
    assert main(["report", name, "--tracking-uri", uri, "--out", str(out)]) == 0
    assert f"{trials} of {trials} trials FINISHED" in capsys.readouterr().out
    assert "| teacher | arch=vgg16_bn, width=4 |" in (out / "report.md").read_text()
    assert (out / "attribution_overlays.png").stat().st_size > 0
