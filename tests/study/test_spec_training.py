"""The spec's ``training`` keys for the accelerator: ``precision``, ``channels_last`` and
``num_workers: auto``, what the plan makes of them, and fractional GPUs reaching Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from study.plan import trial_setup
from study.spec import MAX_NUM_WORKERS, SpecError, parse_spec
from trainables.loop import Optimization
from trainables.precision import MAX_AUTO_WORKERS, PRECISIONS, AcceleratorOptions
from trainables.trial import loop_config


def _spec(**training: Any) -> dict[str, Any]:
    return {"name": "s", "training": training}


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return caught.value.problems


def test_defaults_live_in_accelerator_options() -> None:
    training = parse_spec({"name": "s"}).training
    assert training.accelerator == AcceleratorOptions()
    assert (training.accelerator.precision, training.accelerator.channels_last) == ("auto", True)
    assert training.num_workers == 0  # the integer meaning as before: no worker processes


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_is_accepted(precision: str) -> None:
    assert parse_spec(_spec(precision=precision)).training.accelerator.precision == precision


@pytest.mark.parametrize("flag", [True, False])
def test_channels_last_is_a_boolean(flag: bool) -> None:
    assert parse_spec(_spec(channels_last=flag)).training.accelerator.channels_last is flag


@pytest.mark.parametrize("workers", ["auto", 0, 3, MAX_NUM_WORKERS])
def test_num_workers_is_a_count_or_auto(workers: int | str) -> None:
    assert parse_spec(_spec(num_workers=workers)).training.num_workers == workers


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        (
            {"precision": "fp8"},
            "training.precision: must be one of ['auto', 'fp32', 'bf16', 'fp16'], got 'fp8'",
        ),
        (
            {"precision": "BF16"},
            "training.precision: must be one of ['auto', 'fp32', 'bf16', 'fp16'], got 'BF16'",
        ),
        (
            {"precision": 16},
            "training.precision: must be one of ['auto', 'fp32', 'bf16', 'fp16'], got 16",
        ),
        ({"channels_last": "yes"}, "training.channels_last: must be true or false, got 'yes'"),
        ({"channels_last": 1}, "training.channels_last: must be true or false, got 1"),
        (
            {"num_workers": "many"},
            "training.num_workers: must be an integer in [0, 256] or 'auto', got 'many'",
        ),
        (
            {"num_workers": -1},
            "training.num_workers: must be an integer in [0, 256] or 'auto', got -1",
        ),
        (
            {"num_workers": 257},
            "training.num_workers: must be an integer in [0, 256] or 'auto', got 257",
        ),
        (
            {"num_workers": 1.5},
            "training.num_workers: must be an integer in [0, 256] or 'auto', got 1.5",
        ),
        (
            {"num_workers": True},
            "training.num_workers: must be an integer in [0, 256] or 'auto', got True",
        ),
        ({"precison": "bf16"}, "training.precison: unknown key (did you mean 'precision'?)"),
    ],
)
def test_bad_values_are_named_with_the_rule(training: dict[str, Any], expected: str) -> None:
    assert _problems(_spec(**training)) == [expected]


def test_every_problem_of_the_section_is_reported_at_once() -> None:
    problems = _problems(_spec(precision="half", channels_last="no", num_workers="all"))
    assert [p.split(":")[0] for p in problems] == [
        "training.num_workers",
        "training.precision",
        "training.channels_last",
    ]


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [(0.5, 0), (1, 0), (1.9, 0), (2, 1), (4, 3), (MAX_AUTO_WORKERS + 1, MAX_AUTO_WORKERS), (64, 8)],
)
def test_auto_workers_are_sized_from_the_trials_cpus(cpu: float, expected: int) -> None:
    spec = parse_spec({**_spec(num_workers="auto"), "resources_per_trial": {"cpu": cpu}})
    assert trial_setup(spec, num_classes=3).num_workers == expected


def test_a_count_of_workers_is_kept_whatever_the_cpus() -> None:
    spec = parse_spec({**_spec(num_workers=5), "resources_per_trial": {"cpu": 1}})
    assert trial_setup(spec, num_classes=3).num_workers == 5


def test_precision_and_layout_reach_the_trial_setup_and_the_loop() -> None:
    spec = parse_spec(_spec(precision="fp16", channels_last=False))
    setup = trial_setup(spec, num_classes=3)
    wanted = AcceleratorOptions(precision="fp16", channels_last=False)
    assert setup.accelerator == wanted
    assert loop_config({}, setup).accelerator == wanted


def test_the_teacher_key_is_unchanged_at_fp32_and_its_own_at_bf16_or_fp16() -> None:
    from study.teacher import teacher_key

    spec = parse_spec({"name": "s"})
    # fp32 adds nothing to the hashed payload: teachers cached before precision existed count.
    assert teacher_key(spec) == teacher_key(spec, precision="fp32")
    keys = {teacher_key(spec, precision=p) for p in ("fp32", "bf16", "fp16")}
    assert len(keys) == 3
    # The requested value does not count, only what it resolved to on the driver's device.
    assert teacher_key(parse_spec(_spec(precision="bf16"))) == teacher_key(spec)


@pytest.mark.parametrize("gpu", [0.5, 0.25, 2])
def test_fractional_gpus_are_accepted_and_reach_ray_as_given(gpu: float) -> None:
    from study.runner import _trainable
    from study.teacher import TeacherResult

    spec = parse_spec({"name": "s", "resources_per_trial": {"cpu": 2, "gpu": gpu}})
    assert spec.resources_per_trial.gpu == gpu
    teacher = TeacherResult(state={}, metrics={}, path=Path("teacher.pt"), key="", trained=False)
    trainable = _trainable(spec, trial_setup(spec, num_classes=3), teacher)
    # Ray's placement request for each trial: one bundle with the spec's CPUs and GPU share.
    assert trainable._resources.required_resources == {"CPU": 2.0, "GPU": gpu}


@pytest.mark.parametrize("value", [-1, float("inf"), "x", 2e6])
def test_grad_clip_is_a_bounded_number(value: object) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec({"name": "s", "training": {"grad_clip": value}})
    assert error.value.problems == [
        f"training.grad_clip: must be a number in [0, 1e+06], got {value!r}"
    ]


def test_grad_clip_defaults_to_the_loops_and_0_turns_it_off() -> None:
    assert parse_spec({"name": "s"}).training.optimization.grad_clip == Optimization().grad_clip
    spec = parse_spec({"name": "s", "training": {"grad_clip": 0}})
    assert spec.training.optimization.grad_clip == 0
