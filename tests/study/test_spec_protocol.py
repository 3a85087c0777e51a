"""evaluation.protocol: apc (the default) or official, validated and carried to the trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from study.plan import plan_study, trial_setup
from study.spec import SpecError, parse_spec
from trainables.data.voc import VOCMultiLabel
from trainables.trial import build_split


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return caught.value.problems


def test_the_default_is_apc_and_official_is_accepted() -> None:
    assert parse_spec({"name": "s"}).evaluation.protocol == "apc"
    spec = parse_spec({"name": "s", "evaluation": {"protocol": "official"}})
    assert spec.evaluation.protocol == "official"
    assert spec.evaluation.attribution_methods == ()  # the section's other keys keep defaults


@pytest.mark.parametrize(
    ("evaluation", "expected"),
    [
        (
            {"protocol": "offical"},
            "evaluation.protocol: must be one of ['apc', 'official'], got 'offical'",
        ),
        ({"protocol": 3}, "evaluation.protocol: must be one of ['apc', 'official'], got 3"),
        ({"protocol": None}, "evaluation.protocol: must be one of ['apc', 'official'], got None"),
        ({"protcol": "official"}, "evaluation.protcol: unknown key (did you mean 'protocol'?)"),
    ],
)
def test_bad_protocols_are_refused_with_the_rule(evaluation: dict[str, Any], expected: str) -> None:
    assert problems_of({"name": "s", "evaluation": evaluation}) == [expected]


def test_official_is_refused_for_quantization() -> None:
    data = {
        "name": "s",
        "method": "quantization",
        "search_space": "quantization",
        "evaluation": {"protocol": "official"},
    }
    assert problems_of(data) == [
        "evaluation.protocol: must be 'apc' for method quantization (an int8 network exists "
        "only split at its matched layer, so Grad-CAM cannot be taken before pool5), got "
        "'official'"
    ]
    parse_spec({**data, "evaluation": {"protocol": "apc"}})  # apc stays valid


def test_the_protocol_is_reported_with_every_other_problem() -> None:
    problems = problems_of(
        {"name": "s", "epochs": 0, "evaluation": {"protocol": "x", "overlay_images": -1}}
    )
    assert problems == [
        "epochs: must be an integer in [1, 10000], got 0",
        "evaluation.overlay_images: must be an integer in [0, 1000], got -1",
        "evaluation.protocol: must be one of ['apc', 'official'], got 'x'",
    ]


def test_the_plan_carries_the_protocol_to_trials_and_teacher(voc2012_tree: Path) -> None:
    spec = parse_spec(
        {
            "name": "s",
            "dataset": {"name": "voc2012", "root": str(voc2012_tree), "image_size": 32},
            "evaluation": {"protocol": "official"},
        }
    )
    plan = plan_study(spec)
    assert plan.trial.evaluation_protocol == "official"
    assert plan.teacher.evaluation_protocol == "official"
    assert plan.trial.eval_split == "seg_val"
    evaluation = build_split(plan.trial, plan.trial.eval_split, None)
    assert isinstance(evaluation, VOCMultiLabel)
    assert evaluation.include_difficult
    # The protocol is the evaluation's: the training data keep dataset.options (default off).
    train = build_split(plan.teacher, "train", None)
    assert isinstance(train, VOCMultiLabel)
    assert not train.include_difficult
    apc = plan_study(parse_spec({**_plain(spec), "evaluation": {}}))
    assert apc.trial.evaluation_protocol == "apc"
    apc_evaluation = build_split(apc.trial, apc.trial.eval_split, None)
    assert isinstance(apc_evaluation, VOCMultiLabel)
    assert not apc_evaluation.include_difficult


def test_official_adds_no_option_a_data_set_does_not_have() -> None:
    spec = parse_spec(
        {"name": "s", "dataset": {"image_size": 32}, "evaluation": {"protocol": "official"}}
    )
    setup = trial_setup(spec, num_classes=1)
    assert setup.evaluation_protocol == "official"
    shapes = build_split(setup, setup.eval_split, 2)  # no include_difficult: it would raise
    assert len(shapes) == 2


def _plain(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "dataset": {
            "name": spec.dataset.name,
            "root": spec.dataset.root,
            "image_size": spec.dataset.image_size,
        },
    }
