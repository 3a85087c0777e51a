"""Quantization: QAT through fake-quant with matching, PTQ modes, int8 size, the trainable."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import fx, nn

from trainables.attribution import grad_cam
from trainables.export import export_model, load_exported
from trainables.matching import MatchingConfig, matching_loss, teacher_targets
from trainables.models import build_model, forward_features, forward_head, matched_layer
from trainables.quantization import (
    PTQ_MODES,
    QuantizedNet,
    convert_qat,
    evaluation_view,
    fold_batch_norm,
    parse_config,
    prepare_qat,
    quantize_ptq,
    quantized_size_metrics,
    run_quantization,
)
from trainables.size import count_params, state_dict_bytes
from trainables.trial import TrialSetup

from .reports import Reports

SIZE = 32


def _model(arch: str = "vgg11_bn", divisor: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5, image_size=SIZE, width_divisor=divisor).eval()
    with torch.no_grad():  # non-trivial BN, so folding it is tested
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


def _images(batch: int = 6) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _weight_fake_quants(graph: nn.Module) -> list[tuple[nn.Module, torch.Tensor]]:
    """(fake-quant module, the weight it quantizes) for every weight of a prepared graph."""
    assert isinstance(graph, fx.GraphModule)
    pairs: list[tuple[nn.Module, torch.Tensor]] = []
    for node in graph.graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if isinstance(source, fx.Node) and source.op == "get_attr":
            value = graph.get_parameter(str(source.target))
            if value.dim() >= 2:
                pairs.append((graph.get_submodule(str(node.target)), value))
    return pairs


def test_parse_config_names_every_problem() -> None:
    assert parse_config({"mode": "qat_int8", "matching": "swa", "beta": 1.0}).mode == "qat_int8"
    settings = parse_config({"mode": "static_int8", "calibration_size": 64, "observer": "minmax"})
    assert (settings.calibration_size, settings.observer) == (64, "minmax")
    assert parse_config({"mode": "fp16", "matching": "none"}).mode == "fp16"
    with pytest.raises(
        ValueError,
        match=r"^mode: must be one of \['qat_int8', 'fp16', 'dynamic_int8', 'static_int8'\], got 'int4'$",
    ):
        parse_config({"mode": "int4"})
    with pytest.raises(ValueError, match=r"^matching: ") as error:
        parse_config({"mode": "fp16", "matching": "swa", "beta": 1.0, "observer": "minmax"})
    assert str(error.value).split("; ") == [
        "matching: applies only to mode 'qat_int8' (post-training modes do not fine-tune), got 'swa' with mode 'fp16'",
        "beta: applies only to mode 'qat_int8' (post-training modes do not fine-tune), got 1.0 with mode 'fp16'",
        "observer: applies only to mode 'static_int8', got 'minmax' with mode 'fp16'",
    ]
    with pytest.raises(ValueError, match=r"^calibration_size: ") as error:
        parse_config({"mode": "static_int8", "calibration_size": 0, "observer": "mse"})
    assert str(error.value).split("; ") == [
        "calibration_size: must be an integer >= 1, got 0",
        "observer: must be one of ['histogram', 'minmax'], got 'mse'",
    ]


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
def test_folding_batch_norm_keeps_the_outputs(arch: str) -> None:
    model = _model(arch, divisor=8)
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # left unchanged
    with torch.no_grad():
        torch.testing.assert_close(folded(_images()), model(_images()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "mode"), [("vgg11_bn", m) for m in PTQ_MODES] + [("resnet18", "static_int8")]
)
def test_ptq_modes_stay_close_to_the_float_model_and_shrink_it(arch: str, mode: Any) -> None:
    model = _model(arch)
    calibration = [_images(16)]
    quantized = quantize_ptq(model, mode, image_size=SIZE, calibration=calibration)
    view = evaluation_view(quantized)
    images = _images()
    with torch.no_grad():
        expected, got = model(images), view(images)
        # The evaluated view computes what the converted model computes.
        torch.testing.assert_close(got, quantized(images), rtol=0, atol=1e-6)
    error = float((got - expected).abs().max() / expected.abs().max())
    assert error < (0.01 if mode == "fp16" else 0.15)
    ratio = state_dict_bytes(model) / state_dict_bytes(quantized)
    # int8 weights: ~4x (scales, zero points, float biases and the dropped BN cost a little).
    if mode == "fp16":
        assert 1.9 < ratio < 2.2
    else:
        assert 3.3 < ratio < 4.3
        assert any(v.dtype == torch.int8 for v in quantized.state_dict().values())


def test_static_int8_needs_calibration() -> None:
    with pytest.raises(ValueError, match="calibration: static_int8 needs at least one batch"):
        quantize_ptq(_model(), "static_int8", image_size=SIZE, calibration=[])


def test_qat_dropout_follows_train_and_eval() -> None:
    student = prepare_qat(_model(), SIZE)
    head = student.head
    assert isinstance(head, fx.GraphModule)

    def dropout_modes() -> list[bool]:
        nodes = [n for n in head.graph.nodes if n.target == torch.ops.aten.dropout.default]
        return [bool(n.args[2]) for n in nodes]

    assert dropout_modes() == [True, True]  # the VGG head's two dropouts train
    student.eval()
    assert dropout_modes() == [False, False]
    assert not head.training
    student.train()
    assert dropout_modes() == [True, True]


def test_qat_trains_with_matching_and_its_weights_take_int8_values() -> None:
    teacher = _model()
    student = prepare_qat(teacher, SIZE)
    assert isinstance(student, QuantizedNet)
    assert matched_layer(student) is student.features
    config = MatchingConfig(kind="swa")
    images = _images()
    targets = teacher_targets(teacher, images, None, config)
    features = forward_features(student, images)
    logits = forward_head(student, features)
    loss = matching_loss(student, features, logits, targets, config)
    assert torch.isfinite(loss)
    assert loss > 0
    loss.backward()
    # The matching loss alone reaches the first convolution and the head's weights (second
    # order through the fake-quant head; biases do not move a gradient).
    head_grads = [p.grad for p in student.head.parameters() if p.dim() == 2]
    assert all(g is not None for g in head_grads)
    assert sum(float(g.abs().sum()) for g in head_grads if g is not None) > 0
    first = next(iter(student.features.parameters()))
    assert first.grad is not None
    assert first.grad.abs().sum() > 0
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    optimizer.step()
    for fake_quant, weight in _weight_fake_quants(student.features):
        with torch.no_grad():
            quantized = fake_quant(weight)
        scale = fake_quant.scale.reshape(-1, *[1] * (weight.dim() - 1))
        steps = quantized / scale
        torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)
        levels = steps.round()
        assert levels.min() >= -128
        assert levels.max() <= 127
        assert levels.unique().numel() > 16  # many int8 levels, not a collapsed range


def _observed_qat(teacher: nn.Module) -> QuantizedNet:
    student = prepare_qat(teacher, SIZE)
    with torch.no_grad():
        for _ in range(3):  # the observers settle on the data's ranges
            student(_images(16))
    return student.eval()


def test_converted_qat_model_matches_the_fake_quant_model_and_is_int8() -> None:
    teacher = _model()
    student = _observed_qat(teacher)
    converted = convert_qat(student)
    images = _images()
    with torch.no_grad():
        fake, real = student(images), converted(images)
    # Same int8 grid; conversion only moves the rounding of the folded bias and requantisation.
    assert float((fake - real).abs().max()) < 0.02 * float(fake.abs().max())
    assert state_dict_bytes(teacher) / state_dict_bytes(converted) > 3.3
    metrics = quantized_size_metrics(
        converted,
        SIZE,
        params=count_params(fold_batch_norm(teacher)),
        flops=1,
        reference_params=count_params(teacher),
        large_batch=4,
        latency_repeats=1,
    )
    assert metrics["model_bytes"] == state_dict_bytes(converted)
    assert 0.95 < metrics["param_fraction"] < 1.0  # BN folded away
    assert metrics["latency_ms"] > 0
    assert metrics["latency_ms_b4"] > 0


@pytest.mark.parametrize("converted", [False, True])
def test_grad_cam_has_gradients_through_fake_quant(converted: bool) -> None:
    student = _observed_qat(_model())
    model: nn.Module = student
    if converted:
        model = evaluation_view(convert_qat(student))
    images = _images()
    targets = torch.arange(images.shape[0]) % 5
    maps = grad_cam(model, matched_layer(model), images, targets)
    assert maps.shape == (6, 8, 8)  # VGG11 at 32 px: the matched layer is 8x8
    assert maps.abs().sum() > 0
    assert not converted or maps.grad_fn is None  # a plain map, no graph kept


def test_exported_int8_model_loads_with_plain_pytorch(tmp_path: Path) -> None:
    view = evaluation_view(
        quantize_ptq(_model(), "static_int8", image_size=SIZE, calibration=[_images(8)])
    )
    path = export_model(view, SIZE, tmp_path / "model.pt2")
    loaded = load_exported(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images(3)), view(_images(3)), rtol=0, atol=1e-5)


def _setup(epochs: int) -> TrialSetup:
    return TrialSetup(
        dataset="shapes",
        dataset_options={"image_size": SIZE},
        num_classes=10,
        arch="vgg11_bn",
        teacher_width=8,
        epochs=epochs,
        train_size=16,
        val_size=8,
        batch_size=8,
    )


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg11_bn", num_classes=10, image_size=SIZE, width_divisor=8)


def test_qat_trainable_reports_int8_metrics_and_resumes() -> None:
    setup = _setup(epochs=2)
    teacher = _teacher()
    config = {"mode": "qat_int8", "matching": "sswa", "beta": 1.0, "drop_p": 0.3}
    reports = Reports()
    run_quantization(config, setup, teacher.state_dict(), report=reports)
    assert reports.epochs == [0, 1]
    final = reports.metrics[-1]
    assert {
        "map",
        "attr_cos",
        "attr_l2",
        "loss",
        "params",
        "param_fraction",
        "model_bytes",
        "flops",
        "latency_ms",
        "latency_ms_b32",
    } <= set(final)
    assert "latency_ms_b32" not in reports.metrics[0]
    assert final["model_bytes"] < 0.3 * state_dict_bytes(teacher)
    model = reports.models[-1]
    assert reports.models[0] is None
    assert isinstance(model, QuantizedNet)
    assert any(v.dtype == torch.int8 for v in model.state_dict().values())
    resumed = Reports()
    payload = copy.deepcopy(reports.payloads[0])
    run_quantization(config, setup, teacher.state_dict(), resume=payload, report=resumed)
    assert resumed.epochs == [1]
    assert resumed.metrics[0]["loss"] == final["loss"]
    assert resumed.metrics[0]["map"] == final["map"]


def test_ptq_trainable_measures_once_and_reports_every_epoch() -> None:
    setup = _setup(epochs=2)
    teacher = _teacher()
    config = {"mode": "static_int8", "calibration_size": 8}
    reports = Reports()
    run_quantization(config, setup, teacher.state_dict(), report=reports)
    assert reports.epochs == [0, 1]
    first, last = reports.metrics
    timing = {"time_train_s", "time_eval_s"}
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in last.items() if k not in timing
    }
    assert {"map", "attr_cos", "model_bytes", "latency_ms", "latency_ms_b32"} <= set(last)
    assert last["time_train_s"] == 0.0
    assert first["time_train_s"] > 0.0
    assert reports.payloads == [{"epoch": 1}, {"epoch": 2}]
    assert isinstance(reports.models[-1], QuantizedNet)
    resumed = Reports()
    run_quantization(config, setup, teacher.state_dict(), resume={"epoch": 1}, report=resumed)
    assert resumed.epochs == [1]
    assert resumed.metrics[0]["map"] == last["map"]  # calibration is deterministic
    with pytest.raises(ValueError, match="matching: applies only to mode 'qat_int8'"):
        run_quantization(
            {"mode": "fp16", "matching": "swa"}, setup, teacher.state_dict(), report=Reports()
        )
