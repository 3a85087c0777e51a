"""Method descriptors: one per method, the spec's tables derived from them.

Adding a method is one new module (its trainable) plus its descriptor, registered with
``register_method``: the toy method below is accepted by ``parse_spec`` with nothing else
edited.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from search_spaces.space import builtin_search_space_path
from study.presets import PRESETS_DIR, preset_paths
from study.spec import SpecError, parse_spec
from trainables.methods import MethodDescriptor, Predicate
from trainables.registry import (
    METHODS,
    get_trainable,
    method_descriptor,
    register_method,
    unregister_method,
)


def toy_trainable(config: dict[str, Any], setup: Any, teacher_state: Any) -> None:
    """A trainable that trains nothing."""


def _strength(_: int) -> tuple[str, Predicate]:
    return "must be a number in [0, 1]", lambda v: isinstance(v, float) and 0 <= v <= 1


def _matching(_: int) -> tuple[str, Predicate]:
    return "must be one of ['none', 'ewa']", lambda v: v in ("none", "ewa")


TOY = MethodDescriptor(
    name="toy",
    trainable=f"{__name__}:toy_trainable",
    parameters={"strength": _strength, "matching": _matching},
    required=("strength",),
)


@pytest.fixture
def toy() -> Iterator[MethodDescriptor]:
    register_method(TOY)
    try:
        yield TOY
    finally:
        unregister_method(TOY.name)
    assert TOY.name not in METHODS


def _toy_spec(low: float, high: float) -> dict[str, Any]:
    space = {"parameters": {"strength": {"type": "uniform", "low": low, "high": high}}}
    return {"name": "toy-study", "method": "toy", "search_space": space}


def test_a_registered_method_is_accepted_by_the_spec(toy: MethodDescriptor) -> None:
    assert method_descriptor("toy") is toy
    assert get_trainable("toy") is toy_trainable
    spec = parse_spec(_toy_spec(0.1, 0.9))
    assert spec.method == "toy"
    assert spec.search_space.names == ("strength",)


def test_a_registered_methods_domain_and_parameters_are_checked(toy: MethodDescriptor) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(_toy_spec(0.1, 1.5))
    assert "search_space.parameters.strength.high: must be a number in [0, 1], got 1.5" in str(
        error.value
    )
    foreign = _toy_spec(0.1, 0.9)
    foreign["search_space"]["parameters"]["beta"] = {"type": "uniform", "low": 1, "high": 2}
    with pytest.raises(SpecError, match="beta: unknown parameter of toy"):
        parse_spec(foreign)
    with pytest.raises(SpecError, match="strength: is required by toy"):
        parse_spec(
            {
                **_toy_spec(0.1, 0.9),
                "search_space": {
                    "parameters": {"matching": {"type": "categorical", "choices": ["ewa"]}}
                },
            }
        )


def test_an_unregistered_method_is_refused() -> None:
    with pytest.raises(SpecError, match="method: must be one of"):
        parse_spec(_toy_spec(0.1, 0.9))
    with pytest.raises(ValueError, match="method: must be one of"):
        method_descriptor("toy")


def test_a_descriptor_checks_its_targets() -> None:
    with pytest.raises(ValueError, match="trainable: must be 'module:function'"):
        MethodDescriptor(name="bad", trainable="nothing")
    with pytest.raises(ValueError, match="required: must be among its parameters"):
        MethodDescriptor(name="bad", trainable="a:b", required=("x",))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_default_search_space_exists_and_names_only_its_parameters(name: str) -> None:
    descriptor = method_descriptor(name)
    assert descriptor.search_space is not None
    data = yaml.safe_load(builtin_search_space_path(descriptor.search_space).read_text())
    named = set(data["parameters"])
    assert named <= set(descriptor.parameters)
    assert set(descriptor.required) <= named


@pytest.mark.parametrize("name", list(METHODS))
def test_every_default_search_space_offers_every_matching_kind_with_a_beta(name: str) -> None:
    # The YAML cannot import MATCHING_KINDS; this keeps the spaces in step with it.
    from trainables.matching_kinds import MATCHING_KINDS

    descriptor = method_descriptor(name)
    assert descriptor.search_space is not None
    data = yaml.safe_load(builtin_search_space_path(descriptor.search_space).read_text())
    parameters = data["parameters"]
    assert parameters["matching"]["choices"] == list(MATCHING_KINDS)
    assert parameters["beta"]["when"]["matching"] == [k for k in MATCHING_KINDS if k != "none"]
    domain_rule, domain = descriptor.domains(1)["matching"]
    assert all(domain(kind) for kind in MATCHING_KINDS)
    assert not domain("gwa")
    assert "'gradcam_cos'" in domain_rule


def test_every_presets_method_has_a_descriptor_and_every_named_preset_exists() -> None:
    for path in preset_paths():
        method = yaml.safe_load(path.read_text()).get("method", "distillation")
        assert method in METHODS, path
    named = set()
    for descriptor in METHODS.values():
        for file in descriptor.presets:
            preset = yaml.safe_load((PRESETS_DIR / file).read_text())
            assert preset.get("method", "distillation") == descriptor.name
            named.add(file)
    assert named == {path.name for path in preset_paths()}  # every shipped preset is named


def test_every_descriptors_domains_are_built_and_metrics_are_known() -> None:
    from trainables.metric_names import METRICS

    for descriptor in METHODS.values():
        domains = descriptor.domains(1)
        assert set(domains) == set(descriptor.parameters)
        assert all(isinstance(rule, str) and callable(test) for rule, test in domains.values())
        assert set(descriptor.metrics) <= set(METRICS)
