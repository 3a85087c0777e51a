"""Trainables by compression method name, imported only when used (like Tune's registry).

``"module:function"`` targets keep this module free of torch and of the methods' own
dependencies (torch-pruning), so the CLI can validate a spec without importing them. Each
method may declare a parser of its study-wide options (a spec's ``method_options``):
``parse(options, *, epochs) -> (options object, problems)``, each problem ``"key: rule, got v"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = [
    "OPTION_PARSERS",
    "TRAINABLES",
    "check_method_options",
    "get_trainable",
    "register_trainable",
    "trainable_names",
]

#: method -> "module:function" of its Ray Tune function trainable
#: ``trainable(config, setup: TrialSetup, teacher_state) -> None``.
TRAINABLES: Final[dict[str, str]] = {
    "distillation": "trainables.distillation:distillation_trainable",
    "structured_pruning": "trainables.structured_pruning:structured_pruning_trainable",
    "unstructured_pruning": "trainables.unstructured_pruning:unstructured_pruning_trainable",
    "quantization": "trainables.quantization:quantization_trainable",
}

#: method -> "module:function" parsing its ``method_options``; a method absent here has none.
OPTION_PARSERS: Final[dict[str, str]] = {
    "structured_pruning": "trainables.structured_pruning:parse_options",
    "unstructured_pruning": "trainables.unstructured_pruning:parse_options",
}


def trainable_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(TRAINABLES)


def register_trainable(name: str, target: str, *, options: str | None = None) -> None:
    """Register (or replace) the trainable of method ``name`` as ``"module:function"``."""
    for key, value in (("target", target), ("options", options)):
        if value is not None and value.count(":") != 1:
            raise ValueError(f"{key}: must be 'module:function', got {value!r}")
    TRAINABLES[name] = target
    if options is None:
        OPTION_PARSERS.pop(name, None)
    else:
        OPTION_PARSERS[name] = options


def _load(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    loaded: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return loaded


def get_trainable(name: str) -> Callable[..., None]:
    """The trainable of method ``name``, imported now; ValueError for an unknown name."""
    if name not in TRAINABLES:
        raise ValueError(f"method: must be one of {list(TRAINABLES)}, got {name!r}")
    return _load(TRAINABLES[name])


def check_method_options(name: str, options: Mapping[str, Any], *, epochs: int) -> list[str]:
    """Every problem of ``options`` for method ``name`` (empty when they are valid)."""
    if name not in OPTION_PARSERS:
        return [f"{key}: {name} takes no options, got {options[key]!r}" for key in options]
    _, problems = _load(OPTION_PARSERS[name])(options, epochs=epochs)
    return list(problems)
