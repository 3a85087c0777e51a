"""How a trial uses its accelerator (trainables.precision): the choice per device, the CPU
default path left as it was, the matching loss's gradient under bf16 autocast, short bf16 and
fp16 runs of the loop, loaders, and (``-m gpu``) the same on CUDA."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from trainables.data import ShapesDataset
from trainables.evaluation import evaluate
from trainables.loop import LoopConfig, Optimization, TrainState, train_student
from trainables.matching import MatchingConfig, matching_loss, teacher_targets
from trainables.models import build_model, forward_features, forward_head
from trainables.precision import (
    MAX_AUTO_WORKERS,
    PREFETCH_FACTOR,
    Accelerator,
    AcceleratorOptions,
    auto_num_workers,
    loader_options,
    resolve_precision,
)
from trainables.teacher_cache import TeacherCache
from trainables.trial import TrialSetup, make_loaders

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _models(arch: str = "vgg11_bn") -> tuple[nn.Module, nn.Module]:
    teacher = build_model(arch, num_classes=10, image_size=32, width_divisor=8).eval()
    student = build_model(arch, num_classes=10, image_size=32, width_divisor=16)
    return teacher, student


def _loader(size: int = 24) -> DataLoader[Any]:
    return DataLoader(ShapesDataset("train", size=size, image_size=32), batch_size=8, shuffle=True)


def _train(
    student: nn.Module,
    teacher: nn.Module,
    *,
    precision: str,
    epochs: int = 1,
    device: str = "cpu",
    channels_last: bool = True,
    resume: TrainState | None = None,
    loader: DataLoader[Any] | None = None,
) -> list[tuple[dict[str, float], TrainState]]:
    reports: list[tuple[dict[str, float], TrainState]] = []
    options = AcceleratorOptions(precision=precision, channels_last=channels_last)  # type: ignore[arg-type]
    train_student(
        student,
        teacher,
        loader or _loader(),
        config=LoopConfig(
            epochs=epochs, optimization=Optimization(lr=0.01), beta=1.0, accelerator=options
        ),
        matching=MatchingConfig(kind="swa"),
        evaluate=lambda model, teacher: {},
        report=lambda epoch, metrics, state: reports.append((metrics, state)),
        resume=resume,
        device=device,
    )
    return reports


# -- the choice per device ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "resolved"),
    [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")],
)
def test_on_the_cpu_auto_is_fp32_and_the_rest_as_asked(precision: str, resolved: str) -> None:
    assert resolve_precision(precision, "cpu") == resolved  # type: ignore[arg-type]


def test_an_unknown_precision_is_refused_with_the_rule() -> None:
    rule = r"precision: must be one of \['auto', 'fp32', 'bf16', 'fp16'\], got 'fp8'"
    with pytest.raises(ValueError, match=rule):
        resolve_precision("fp8", "cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rule):
        AcceleratorOptions(precision="fp8")  # type: ignore[arg-type]


@pytest.mark.parametrize(("native", "resolved"), [(True, "bf16"), (False, "fp32")])
def test_on_cuda_auto_is_bf16_where_native_else_fp32(
    monkeypatch: pytest.MonkeyPatch, native: bool, resolved: str
) -> None:
    import trainables.precision as precision

    monkeypatch.setattr(precision, "_native_bf16", lambda device: native)
    assert resolve_precision("auto", "cuda") == resolved
    assert resolve_precision("fp16", "cuda") == "fp16"


def test_bf16_on_a_cuda_device_without_native_bf16_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trainables.precision as precision

    monkeypatch.setattr(precision, "_native_bf16", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    expected = (
        "precision: bf16 needs a CUDA device with native bfloat16 (compute capability 8.0 or "
        "later; use fp16 or auto there), got Tesla V100-SXM2 (capability 7.0)"
    )
    with pytest.raises(ValueError, match="precision: bf16 needs") as caught:
        resolve_precision("bf16", "cuda")
    assert str(caught.value) == expected


def test_the_cpu_default_is_fp32_without_autocast_scaler_layout_or_copies() -> None:
    accelerator = Accelerator.on("cpu")
    assert accelerator == Accelerator.plain("cpu")
    assert (accelerator.precision, accelerator.channels_last) == ("fp32", False)
    assert accelerator.grad_scaler() is None
    assert not accelerator.pin_memory
    images = torch.randn(2, 3, 8, 8)
    assert accelerator.images(images) is images  # the very tensor: no copy, no layout change
    with accelerator.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_channels_last_applies_on_cuda_only() -> None:
    assert not Accelerator.on("cpu", AcceleratorOptions(channels_last=True)).channels_last


@pytest.mark.parametrize(
    ("precision", "scaled"), [("fp32", False), ("bf16", False), ("fp16", True)]
)
def test_only_fp16_scales_its_loss(precision: str, scaled: bool) -> None:
    accelerator = Accelerator.on("cpu", AcceleratorOptions(precision=precision))  # type: ignore[arg-type]
    scaler = accelerator.grad_scaler()
    assert isinstance(scaler, torch.amp.GradScaler) is scaled


def test_the_default_loop_on_the_cpu_never_enters_autocast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CPU default path is the one before precision existed, so existing numbers stand."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("autocast entered on the CPU default path")

    monkeypatch.setattr(torch, "autocast", refuse)
    teacher, student = _models()
    reports: list[TrainState] = []
    train_student(
        student,
        teacher,
        _loader(),
        config=LoopConfig(epochs=1, beta=1.0),
        matching=MatchingConfig(kind="swa"),
        evaluate=lambda model, teacher: {},
        report=lambda epoch, metrics, state: reports.append(state),
    )
    assert reports[0].scaler is None
    assert "scaler" not in reports[0].as_dict()  # the checkpoint payload as before
    assert all(p.dtype == torch.float32 for p in student.parameters())


# -- the matching loss's gradient under bf16 autocast ---------------------------------------


def _student_gradient(
    student: nn.Module,
    teacher: nn.Module,
    batch: dict[str, Tensor],
    matching: MatchingConfig,
    accelerator: Accelerator,
    seed: int,
) -> Tensor:
    """d matching loss / d student parameters [P] (flattened, fp32), as the loop computes it."""
    student.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks in the student's head at every precision
    generator = torch.Generator(device=accelerator.device).manual_seed(seed)  # SSWA's masks
    images = accelerator.images(batch["image"])
    labels = accelerator.tensor(batch["labels"])
    with accelerator.autocast():
        features = forward_features(student, images)
        logits = forward_head(student, features)
        targets = teacher_targets(teacher, images, labels, matching, generator=generator)
        loss = matching_loss(student, features, logits, targets, matching, generator=generator)
    loss.backward()
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float()
            for p in student.parameters()
        ]
    )


def gradient_agreement(
    arch: str, matching: MatchingConfig, *, train: bool, seeds: range, device: str = "cpu"
) -> tuple[float, float]:
    """Median over ``seeds`` (each its own models and batch of 16 images) of the cosine
    similarity and the relative error ||g_bf16 - g_fp32|| / ||g_fp32|| between the student's
    matching-loss gradients under bf16 autocast and at fp32."""
    bf16 = Accelerator(torch.device(device), "bf16")
    fp32 = Accelerator(torch.device(device), "fp32")
    cosines, errors = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        teacher, student = _models(arch)
        teacher.to(device)
        student.to(device).train(train)
        data = ShapesDataset("train", size=16, image_size=32, seed=seed)
        batch = next(iter(DataLoader(data, batch_size=16)))
        low = _student_gradient(student, teacher, batch, matching, bf16, seed)
        exact = _student_gradient(student, teacher, batch, matching, fp32, seed)
        cosines.append(float(nn.functional.cosine_similarity(low, exact, dim=0)))
        errors.append(float((low - exact).norm() / exact.norm()))
    return statistics.median(cosines), statistics.median(errors)


MATCHINGS = [
    MatchingConfig(kind="ewa"),
    MatchingConfig(kind="swa"),
    MatchingConfig(kind="sswa", drop_p=0.3),
]


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
@pytest.mark.parametrize("matching", MATCHINGS, ids=lambda m: m.kind)
def test_matching_gradient_under_bf16_autocast_agrees_with_fp32(
    arch: str, matching: MatchingConfig
) -> None:
    """The student's matching-loss gradient (the second-order pass through Grad-CAM: VGG's
    classifier head, ResNet's closed form) under CPU bf16 autocast against fp32, median of 5
    seeds, BatchNorm on running statistics so that what is compared is what autocast does.

    Measured on this machine (medians of seeds 0-4): cosine 0.9972-0.9996, relative error
    0.030-0.081 over the six cases (VGG SWA 0.9981 / 0.081 the worst error). Single seeds
    spread wider, down to a degenerate batch whose student maps are near zero everywhere,
    where even fp32's gradient jumps under a 2^-9 change of the input: hence the median.
    Bounds: cosine > 0.99, relative error < 0.15 (1.8 times the worst measured). With the
    student's Grad-CAM weights cut from the graph under autocast (a broken second-order
    path), the same medians are cosine 0.81-0.88 and relative error 0.49-0.58: both fail.
    """
    cosine, error = gradient_agreement(arch, matching, train=False, seeds=range(5))
    assert cosine > 0.99, (cosine, error)
    assert error < 0.15, (cosine, error)


@pytest.mark.parametrize("matching", MATCHINGS, ids=lambda m: m.kind)
def test_matching_gradient_under_bf16_in_train_mode_stays_close(matching: MatchingConfig) -> None:
    """As the loop trains (BatchNorm on batch statistics, dropout): VGG, median of 5 seeds.

    BatchNorm's backward takes the batch-mean and scale parts out of the gradient, which are
    most of what the scale-free map distance sends back; what is left carries bf16's
    rounding magnified. Measured (medians of seeds 0-4): cosine 0.9645-0.9918, relative
    error 0.130-0.272 (SWA the worst), where the KD loss's gradient at bf16 measures cosine
    0.998-0.9996 and error 0.03-0.07; ResNet, with more BatchNorm layers, measures
    0.90-0.96 and 0.26-0.46 and is left to the test above. Bounds: cosine > 0.9, relative
    error < 0.45 (1.65 times the worst measured); the cut second-order path measures cosine
    0.73-0.79 and error 0.62-0.69, and fails both.
    """
    cosine, error = gradient_agreement("vgg11_bn", matching, train=True, seeds=range(5))
    assert cosine > 0.9, (cosine, error)
    assert error < 0.45, (cosine, error)


# -- the loop at bf16 and fp16 --------------------------------------------------------------


def test_a_short_bf16_run_trains_with_a_finite_loss() -> None:
    teacher, student = _models()
    start = copy.deepcopy(student.state_dict())
    reports = _train(student, teacher, precision="bf16")
    metrics, state = reports[-1]
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert state.scaler is None  # bf16 has fp32's range: nothing to scale
    # The weights stay fp32 (autocast computes in bf16, it does not store in it), and moved.
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert any(not torch.equal(v, start[k]) for k, v in state.model.items())


# Every step of the first epoch overflows here, so the scheduler steps before the optimiser
# ever did, which PyTorch warns of; that is what a scaler's skipped steps are.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_fp16_scales_its_loss_and_a_resume_restores_the_scaler() -> None:
    teacher, student = _models()
    start = copy.deepcopy(student.state_dict())
    straight = _train(student, teacher, precision="fp16", epochs=2)
    first = straight[0][1]
    assert torch.isfinite(torch.tensor(straight[-1][0]["loss"]))
    assert first.scaler is not None
    # The scale starts at 2^16 and halves on every step whose gradient overflowed; the
    # matching loss's gradient at a random start does, a few times.
    assert 0 < first.scaler["scale"] <= 2.0**16
    assert first.as_dict()["scaler"] == first.scaler
    restored = TrainState.from_dict(first.as_dict())
    fresh = _models()[1]
    fresh.load_state_dict(start)
    resumed = _train(fresh, teacher, precision="fp16", epochs=2, resume=restored)
    assert resumed[-1][1].scaler == straight[-1][1].scaler
    for key, value in straight[-1][1].model.items():
        torch.testing.assert_close(resumed[-1][1].model[key], value)


def test_the_teacher_cache_holds_the_autocast_dtype() -> None:
    teacher, _ = _models()
    data = ShapesDataset("train", size=8, image_size=32)
    batches = DataLoader(data, batch_size=4)
    bf16 = Accelerator.on("cpu", AcceleratorOptions(precision="bf16"))
    cache = TeacherCache.build(
        teacher, batches, size=8, device=torch.device("cpu"), accelerator=bf16
    )
    assert cache is not None
    assert cache.features.dtype == torch.bfloat16  # half of fp32's bytes per cached sample
    with pytest.raises(ValueError, match="accelerator: must be on device meta, got cpu"):
        TeacherCache.build(teacher, batches, size=8, device=torch.device("meta"), accelerator=bf16)


def test_evaluation_under_bf16_measures_in_fp32_close_to_fp32() -> None:
    teacher, student = _models()
    loader = DataLoader(ShapesDataset("val", size=16, image_size=32), batch_size=8)
    exact = evaluate(student, loader, teacher=teacher).metrics
    bf16 = Accelerator.on("cpu", AcceleratorOptions(precision="bf16"))
    low = evaluate(student, loader, teacher=teacher, accelerator=bf16).metrics
    assert low.keys() == exact.keys()
    for name in ("loss", "attr_cos", "attr_l2"):
        assert low[name] == pytest.approx(exact[name], rel=0.05), name
    with pytest.raises(ValueError, match=r"device: must be the accelerator's \(cpu\)"):
        evaluate(student, loader, device="meta", accelerator=bf16)


# -- loaders --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpus", "workers"), [(0.5, 0), (1, 0), (2, 1), (4, 3), (100, MAX_AUTO_WORKERS)]
)
def test_auto_workers_leave_one_cpu_to_training(cpus: float, workers: int) -> None:
    assert auto_num_workers(cpus) == workers


def test_loader_options_pin_on_cuda_and_prefetch_with_workers() -> None:
    assert loader_options("cpu", num_workers=0, persistent=True) == {
        "num_workers": 0,
        "pin_memory": False,
    }
    assert loader_options("cuda", num_workers=2, persistent=False) == {
        "num_workers": 2,
        "pin_memory": True,
        "prefetch_factor": PREFETCH_FACTOR,
        "persistent_workers": False,
    }


def _setup(workers: int) -> TrialSetup:
    return TrialSetup(
        dataset="shapes",
        dataset_options={"image_size": 32},
        num_classes=10,
        arch="vgg11_bn",
        teacher_width=8,
        epochs=2,
        train_size=12,
        val_size=8,
        batch_size=4,
        num_workers=workers,
    )


def test_only_the_evaluation_loaders_workers_persist() -> None:
    train, evaluation = make_loaders(_setup(1), device="cuda")
    assert (train.pin_memory, evaluation.pin_memory) == (True, True)
    assert (train.persistent_workers, evaluation.persistent_workers) == (False, True)
    assert train.prefetch_factor == evaluation.prefetch_factor == PREFETCH_FACTOR


def _epoch_orders(loader: DataLoader[Any], epochs: range) -> Iterator[list[int]]:
    for epoch in epochs:
        torch.manual_seed(1000 + epoch)  # as the loop seeds each epoch
        yield [int(i) for batch in loader for i in batch["index"]]


def test_a_resumed_trial_sees_the_batches_an_uninterrupted_one_does_with_workers() -> None:
    """Why the training loader's workers do not persist: a persistent loader's second pass
    draws its shuffle from another point of the global RNG than a fresh loader's first."""
    straight = list(_epoch_orders(make_loaders(_setup(1))[0], range(2)))
    resumed = list(_epoch_orders(make_loaders(_setup(1))[0], range(1, 2)))
    assert resumed == straight[1:]


# -- CUDA (deselected by default; `pytest -m gpu` on a machine with a GPU) -----------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_channels_last_epoch() -> None:
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("the GPU has no native bf16")
    teacher, student = _models()
    reports = _train(student, teacher, precision="auto", device="cuda")
    assert torch.isfinite(torch.tensor(reports[-1][0]["loss"]))
    assert reports[-1][1].scaler is None
    weight = next(p for p in student.parameters() if p.dim() == 4)
    assert weight.is_cuda
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


@pytest.mark.gpu
@needs_cuda
def test_cuda_fp16_with_a_loss_scaler() -> None:
    teacher, student = _models()
    reports = _train(student, teacher, precision="fp16", device="cuda", epochs=2)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m, _ in reports)
    scaler = reports[-1][1].scaler
    assert scaler is not None
    assert 0 < scaler["scale"] <= 2.0**16


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("matching", MATCHINGS, ids=lambda m: m.kind)
def test_cuda_matching_gradient_under_bf16_autocast_agrees_with_fp32(
    matching: MatchingConfig,
) -> None:
    """As the CPU test, on CUDA, against IEEE fp32 (TF32 off for the reference): the same
    bounds, cosine > 0.99 and relative error < 0.15 (not yet measured on a GPU)."""
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("the GPU has no native bf16")
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv  # type: ignore[attr-defined]
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        cosine, error = gradient_agreement(
            "vgg11_bn", matching, train=False, seeds=range(5), device="cuda"
        )
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved
    assert cosine > 0.99, (cosine, error)
    assert error < 0.15, (cosine, error)
