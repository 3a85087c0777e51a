"""The trainable registry: method names, lazy targets, method options."""

from __future__ import annotations

import pytest

from study.spec import METHODS
from trainables import registry
from trainables.registry import check_method_options, get_trainable, register_trainable


def test_every_method_a_spec_accepts_has_an_importable_trainable() -> None:
    assert set(METHODS) == set(registry.TRAINABLES)
    assert {"distillation", "structured_pruning", "unstructured_pruning"} <= set(METHODS)
    for name in METHODS:
        trainable = get_trainable(name)
        assert callable(trainable)
        assert trainable.__name__ == f"{name}_trainable"
    with pytest.raises(ValueError, match=r"method: must be one of \['distillation'"):
        get_trainable("quantisation")


def test_method_options_are_checked_by_the_method() -> None:
    assert check_method_options("structured_pruning", {"scheme": "global"}, epochs=3) == []
    assert check_method_options("unstructured_pruning", {"steps": 3}, epochs=6) == []
    assert check_method_options("distillation", {"steps": 3}, epochs=6) == [
        "steps: distillation takes no options, got 3"
    ]


def test_register_trainable_checks_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "TRAINABLES", dict(registry.TRAINABLES))
    monkeypatch.setattr(registry, "OPTION_PARSERS", dict(registry.OPTION_PARSERS))
    register_trainable("copy", "trainables.distillation:distillation_trainable")
    assert get_trainable("copy") is get_trainable("distillation")
    with pytest.raises(ValueError, match="target: must be 'module:function', got 'nothing'"):
        register_trainable("bad", "nothing")
