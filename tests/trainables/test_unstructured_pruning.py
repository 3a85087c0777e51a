"""Unstructured pruning: exact global magnitude masks, zeros that stay zero, the iterative trainable."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainables.data import ShapesDataset
from trainables.loop import CompressionHooks, LoopConfig, Optimization, train_student
from trainables.matching import MatchingConfig
from trainables.models import build_model
from trainables.trial import TrialSetup
from trainables.unstructured_pruning import (
    MagnitudeMasks,
    UnstructuredSchedule,
    parse_options,
    prunable_weights,
    run_unstructured_pruning,
)

from .reports import Reports

SIZE = 32


def _model() -> nn.Module:
    return build_model("vgg11_bn", num_classes=10, image_size=SIZE, width_divisor=8)


def _conv_zeros(model: nn.Module) -> tuple[int, int]:
    weights = prunable_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


def test_schedule_sparsity_and_checks() -> None:
    schedule = UnstructuredSchedule(rate=0.2, steps=16, epochs_per_step=30)
    assert schedule.epochs == 480
    assert schedule.sparsity(16) == pytest.approx(1 - 0.8**16)  # the paper's 97.2%
    assert schedule.sparsity(0) == 0.0
    with pytest.raises(ValueError, match=r"rate: must be in \[0, 1\), got 1.0; steps: must be"):
        UnstructuredSchedule(rate=1.0, steps=0, epochs_per_step=1)


def test_prunable_weights_are_conv_weights_unless_linear_is_asked_for() -> None:
    model = _model()
    convs = prunable_weights(model)
    assert convs
    assert all(name.startswith("features.") and name.endswith(".weight") for name in convs)
    assert all(w.dim() == 4 for w in convs.values())
    both = prunable_weights(model, include_linear=True)
    assert set(both) - set(convs) == {
        "classifier.0.weight",
        "classifier.3.weight",
        "classifier.6.weight",
    }


def test_sixteen_paper_steps_give_exactly_the_asked_sparsity_by_global_magnitude() -> None:
    model = _model()
    original = {k: w.detach().clone() for k, w in model.named_parameters()}
    masks = MagnitudeMasks.dense(model)
    schedule = UnstructuredSchedule(rate=0.2, steps=16, epochs_per_step=1)
    previous = None
    for step in range(1, schedule.steps + 1):
        masks.prune_to(model, schedule.sparsity(step))
        zeros, total = _conv_zeros(model)
        assert zeros == round(total * (1 - 0.8**step))
        assert masks.sparsity == zeros / total
        current = {k: m.clone() for k, m in masks.masks.items()}
        if previous is not None:  # once pruned, always pruned
            assert all(bool((current[k] <= previous[k]).all()) for k in current)
        previous = current
    # One global threshold: every kept weight is at least as large as every pruned one.
    weights = prunable_weights(model)
    kept = torch.cat([weights[k][m].abs() for k, m in masks.masks.items()])
    assert kept.numel() == round(masks.total * 0.8**16)
    assert kept.min() > 0
    pruned = torch.cat([original[k][~m].abs() for k, m in masks.masks.items()])
    assert pruned.max() <= kept.min()
    # BN, biases and the head are untouched.
    others = [(n, p) for n, p in model.named_parameters() if n not in masks.masks]
    assert all(torch.equal(p, original[n]) for n, p in others)
    with pytest.raises(ValueError, match=r"sparsity: must be in \[0, 1\), got 1.0"):
        masks.prune_to(model, 1.0)


def test_pruned_weights_stay_exactly_zero_while_fine_tuning() -> None:
    teacher, student = _model().eval(), _model()
    student.load_state_dict(teacher.state_dict())
    masks = MagnitudeMasks.dense(student, include_linear=True)
    masks.prune_to(student, 0.6)
    before = {
        k: v.detach().clone() for k, v in prunable_weights(student, include_linear=True).items()
    }
    loader = DataLoader(ShapesDataset("train", size=16, image_size=SIZE), batch_size=8)
    # Momentum and weight decay would move the pruned weights off zero without the hook.
    train_student(
        student,
        teacher,
        loader,
        config=LoopConfig(
            epochs=2, optimization=Optimization(lr=0.05, weight_decay=0.01), beta=1.0
        ),
        matching=MatchingConfig(kind="swa"),
        evaluate=lambda m, t: {},
        report=lambda e, m, s: None,
        hooks=CompressionHooks(after_step=masks.apply),
    )
    after = prunable_weights(student, include_linear=True)
    for name, mask in masks.masks.items():
        assert bool((after[name][~mask] == 0).all())
        assert not torch.equal(after[name][mask], before[name][mask])  # the rest did train
    assert masks.sparsity == round(0.6 * masks.total) / masks.total


def test_parse_options_reports_every_problem() -> None:
    assert parse_options({"steps": 2}, epochs=4) == (parse_options({"steps": 2}, epochs=4)[0], [])
    _, problems = parse_options({}, epochs=3)
    assert problems == [
        "steps: must divide epochs (3) so that every pruning step fine-tunes as long, got 16 (the default, as the paper)"
    ]
    _, problems = parse_options({"steps": 0, "include_linear": "yes", "rate": 0.2}, epochs=3)
    assert problems == [
        "rate: unknown option of unstructured_pruning (valid: steps, include_linear)",
        "steps: must be a positive integer, got 0",
        "include_linear: must be true or false, got 'yes'",
    ]


def _setup() -> TrialSetup:
    return TrialSetup(
        dataset="shapes",
        dataset_options={"image_size": SIZE},
        num_classes=10,
        arch="vgg11_bn",
        teacher_width=8,
        epochs=4,
        train_size=16,
        val_size=8,
        batch_size=8,
        extra={"steps": 2},
    )


def test_trainable_reports_every_step_and_resumes_inside_and_between_steps() -> None:
    setup = _setup()
    teacher = _model()
    config = {"prune_rate": 0.5, "matching": "ewa", "beta": 1.0}
    reports = Reports()
    run_unstructured_pruning(config, setup, teacher.state_dict(), report=reports)
    # Two steps of two epochs each; epochs are counted over the steps.
    steps = [m["prune_step"] for m in reports.metrics]
    assert list(zip(reports.epochs, steps, strict=True)) == [(0, 1), (1, 1), (2, 2), (3, 2)]
    total = sum(w.numel() for w in prunable_weights(teacher).values())
    half, three_quarters = round(total * 0.5) / total, round(total * 0.75) / total
    assert [m["sparsity"] for m in reports.metrics] == [half, half, three_quarters, three_quarters]
    final = reports.metrics[-1]
    assert {
        "nonzero_params",
        "model_bytes",
        "model_bytes_sparse",
        "flops",
        "latency_ms",
        "param_fraction",
        "latency_ms_b32",
        "map",
    } <= set(final)
    assert "latency_ms_b32" not in reports.metrics[1]
    assert final["nonzero_params"] < 0.4 * final["params"]
    assert final["param_fraction"] == final["nonzero_params"] / final["params"]
    assert final["model_bytes_sparse"] < final["model_bytes"]
    assert [m is None for m in reports.models] == [True, True, True, False]
    student = _model()
    student.load_state_dict(reports.payloads[-1]["loop"]["model"])
    assert _conv_zeros(student) == (round(total * 0.75), total)
    # Resume inside a step (after epoch 0) and at a step boundary (after epoch 1).
    for index, expected in ((0, [1, 2, 3]), (1, [2, 3])):
        resumed = Reports()
        run_unstructured_pruning(
            config, setup, teacher.state_dict(), resume=reports.payloads[index], report=resumed
        )
        assert resumed.epochs == expected
        assert resumed.metrics[-1]["loss"] == final["loss"]
        assert resumed.metrics[-1]["sparsity"] == three_quarters
