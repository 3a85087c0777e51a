"""Structured pruning: schemes, physically smaller models, no permuted columns, the trainable."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from trainables.matching import MatchingConfig, matching_loss, teacher_targets
from trainables.models import build_model, forward_features, forward_head
from trainables.size import count_params
from trainables.structured_pruning import (
    conv_layers,
    paper_layers,
    parse_options,
    prune_structured,
    run_structured_pruning,
)
from trainables.trial import TrialSetup

from .reports import Reports

SIZE = 32


def _model(arch: str, divisor: int = 8) -> nn.Module:
    model = build_model(arch, num_classes=5, image_size=SIZE, width_divisor=divisor).eval()
    # Non-trivial BN statistics and affine parameters, so a wrong channel shows in the outputs.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    return model


def _images() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE)


def test_paper_scheme_prunes_conv1_and_the_last_two_stages() -> None:
    # At 32 px the trailing pools are Identity; the stages are still found.
    assert paper_layers(_model("vgg16_bn")) == (1, 8, 9, 10, 11, 12, 13)
    assert paper_layers(_model("vgg11_bn")) == (1, 5, 6, 7, 8)
    with pytest.raises(ValueError, match="scheme: 'paper' applies to VGG models"):
        paper_layers(_model("resnet18"))


def test_paper_scheme_shrinks_exactly_the_selected_convolutions() -> None:
    model = _model("vgg16_bn")
    pruned = prune_structured(model, rate=0.5, image_size=SIZE, scheme="paper").model
    before = [c.out_channels for _, c in conv_layers(model)]
    after = [c.out_channels for _, c in conv_layers(pruned)]
    selected = {1, 8, 9, 10, 11, 12, 13}
    assert after == [c // 2 if i + 1 in selected else c for i, c in enumerate(before)]
    # The next layer's inputs and the BNs follow.
    convs = [c for _, c in conv_layers(pruned)]
    assert [c.in_channels for c in convs[1:]] == after[:-1]
    bns = [m for m in pruned.features if isinstance(m, nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == after
    assert pruned.classifier[0].in_features == after[-1]


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18", "resnet50"])
def test_uniform_half_gives_the_architecture_of_half_the_width(arch: str) -> None:
    model = _model(arch, divisor=8)
    result = prune_structured(model, rate=0.5, image_size=SIZE, scheme="uniform")
    narrow = build_model(arch, num_classes=5, image_size=SIZE, width_divisor=16)
    shapes = {k: v.shape for k, v in result.model.state_dict().items()}
    expected = {k: v.shape for k, v in narrow.state_dict().items()}
    if arch.startswith("vgg"):
        # Linear layers keep their outputs: the VGG head's hidden width stays the teacher's.
        shapes = {k: s for k, s in shapes.items() if not k.startswith("classifier.")}
        expected = {k: s for k, s in expected.items() if not k.startswith("classifier.")}
        assert result.model.classifier[0].in_features == narrow.classifier[0].in_features
    assert shapes == expected
    assert result.model(_images()).shape == (3, 5)
    assert result.param_fraction == count_params(result.model) / count_params(model)
    assert result.param_fraction < (0.3 if arch.startswith("resnet") else 0.6)


@pytest.mark.parametrize(
    ("arch", "scheme"),
    [
        ("vgg11_bn", "paper"),
        ("vgg16_bn", "global"),
        ("resnet18", "uniform"),
        ("resnet18", "global"),
        ("resnet50", "uniform"),
    ],
)
def test_pruned_model_computes_what_the_original_computes_with_those_channels_silenced(
    arch: str, scheme: Any
) -> None:
    # Zeroing a removed channel's BN scale and shift makes it output exactly 0 (ReLU(0) = 0),
    # so the original network then computes what the pruned one must: any permuted or shifted
    # input column (the official code's `repeat` bug) changes the outputs.
    model = _model(arch)
    result = prune_structured(model, rate=0.4, image_size=SIZE, scheme=scheme)
    assert result.removed
    silenced = copy.deepcopy(model)
    layers = dict(silenced.named_modules())
    with torch.no_grad():
        for name, removed in result.removed.items():
            if isinstance(layers[name], nn.BatchNorm2d):
                layers[name].weight[list(removed)] = 0.0
                layers[name].bias[list(removed)] = 0.0
        images = _images()
        expected = silenced(images)
        assert not torch.allclose(expected, model(images), atol=1e-4)
        torch.testing.assert_close(result.model(images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
def test_rate_zero_keeps_every_channel_and_the_outputs(arch: str) -> None:
    model = _model(arch)
    result = prune_structured(model, rate=0.0, image_size=SIZE)
    assert result.removed == {}
    assert result.param_fraction == 1.0
    with torch.no_grad():
        images = _images()
        assert torch.equal(result.model(images), model(images))


def test_pruning_is_deterministic_and_leaves_the_teacher_alone() -> None:
    model = _model("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = prune_structured(model, rate=0.5, image_size=SIZE, scheme="global").model
    second = prune_structured(model, rate=0.5, image_size=SIZE, scheme="global").model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Hence a checkpoint of a fine-tuned student loads into a re-pruned architecture.
    second.load_state_dict(first.state_dict())


def test_layers_scheme_and_bad_arguments() -> None:
    model = _model("vgg11_bn")
    pruned = prune_structured(model, rate=0.5, image_size=SIZE, scheme="layers", layers=[2, 3])
    widths = [c.out_channels for _, c in conv_layers(pruned.model)]
    full = [c.out_channels for _, c in conv_layers(model)]
    assert widths == [full[0], full[1] // 2, full[2] // 2, *full[3:]]
    with pytest.raises(
        ValueError, match=r"layers: must be convolution numbers in \[1, 8\], got \[9\]"
    ):
        prune_structured(model, rate=0.5, image_size=SIZE, scheme="layers", layers=[9])
    with pytest.raises(ValueError, match=r"rate: must be a channel fraction in \[0, 1\), got 1.0"):
        prune_structured(model, rate=1.0, image_size=SIZE)


def test_parse_options_reports_every_problem() -> None:
    options, problems = parse_options({"scheme": "paper"}, epochs=3)
    assert (options.scheme, problems) == ("paper", [])
    _, problems = parse_options(
        {"scheme": "layers", "layers": [0], "max_layer_rate": 1.5, "colour": 1}, epochs=3
    )
    assert problems == [
        "colour: unknown option of structured_pruning (valid: scheme, layers, max_layer_rate)",
        "layers: must be a list of convolution numbers >= 1, got [0]",
        "layers: scheme 'layers' needs a non-empty list, got [0]",
        "max_layer_rate: must be a number in (0, 1), got 1.5",
    ]


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
@pytest.mark.parametrize("kind", ["ewa", "swa", "sswa", "gradcam_cos"])
def test_matching_losses_train_a_pruned_student(arch: str, kind: Any) -> None:
    teacher = _model(arch)
    student = prune_structured(teacher, rate=0.5, image_size=SIZE).model.train()
    config = MatchingConfig(kind=kind, drop_p=0.3 if kind == "sswa" else 0.0)
    images = _images()
    targets = teacher_targets(teacher, images, None, config)
    features = forward_features(student, images)
    assert features.shape[1] < targets.features.shape[1]  # fewer channels than the teacher
    loss = matching_loss(student, features, forward_head(student, features), targets, config)
    assert torch.isfinite(loss)
    assert loss > 0
    loss.backward()
    first = conv_layers(student)[0][1].weight.grad
    assert first is not None
    assert first.abs().sum() > 0


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
        extra={"scheme": "paper"},
    )


def test_trainable_reports_size_metrics_and_resumes_into_the_pruned_architecture() -> None:
    setup = _setup(epochs=2)
    teacher = build_model("vgg11_bn", num_classes=10, image_size=SIZE, width_divisor=8)
    config = {"prune_rate": 0.5, "matching": "swa", "beta": 1.0}
    reports = Reports()
    run_structured_pruning(config, setup, teacher.state_dict(), report=reports)
    assert reports.epochs == [0, 1]
    final = reports.metrics[-1]
    assert {
        "map",
        "loss",
        "params",
        "nonzero_params",
        "model_bytes",
        "flops",
        "latency_ms",
        "param_fraction",
        "latency_ms_b32",
    } <= set(final)
    assert "latency_ms_b32" not in reports.metrics[0]
    assert final["params"] == pytest.approx(
        final["param_fraction"] * count_params(teacher), rel=0.01
    )
    assert 0.2 < final["param_fraction"] < 0.6
    # The trained pruned student is handed over with the last epoch, to be saved.
    student = reports.models[-1]
    assert reports.models[0] is None
    assert student is not None
    assert count_params(student) == final["params"]
    resumed = Reports()
    run_structured_pruning(
        config, setup, teacher.state_dict(), resume=reports.payloads[0], report=resumed
    )
    assert resumed.epochs == [1]
    assert resumed.metrics[0]["loss"] == final["loss"]
    with pytest.raises(ValueError, match="prune_rate: is required by structured_pruning"):
        run_structured_pruning({}, setup, teacher.state_dict(), report=Reports())
