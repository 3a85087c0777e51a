"""Compression methods by name (torchtune-recipe style): their descriptors and trainables.

A method is a :class:`trainables.methods.MethodDescriptor`; its ``"module:function"``
targets keep this module free of torch and of the methods' own dependencies
(torch-pruning), so the CLI can validate a spec without importing them. A method's options
parser reads a spec's ``method_options``:
``parse(options, *, epochs) -> (options object, problems)``, each problem ``"key: rule, got v"``.
``TRAINABLES`` and ``OPTION_PARSERS`` are the lookup tables of the registered methods;
``register_method`` keeps them in step with ``METHODS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Final

from trainables.methods import BUILTIN_METHODS, MethodDescriptor

__all__ = [
    "METHODS",
    "OPTION_PARSERS",
    "TRAINABLES",
    "check_method_options",
    "get_trainable",
    "method_descriptor",
    "method_parameters",
    "register_method",
    "register_trainable",
    "searched_parameters",
    "trainable_names",
    "unregister_method",
]

#: method -> its descriptor, in registration order.
METHODS: Final[dict[str, MethodDescriptor]] = {m.name: m for m in BUILTIN_METHODS}

#: method -> "module:function" of its Ray Tune function trainable
#: ``trainable(config, setup: TrialSetup, teacher_state) -> None``.
TRAINABLES: Final[dict[str, str]] = {m.name: m.trainable for m in METHODS.values()}

#: method -> "module:function" parsing its ``method_options``; a method absent here has none.
OPTION_PARSERS: Final[dict[str, str]] = {
    m.name: m.options for m in METHODS.values() if m.options is not None
}


def trainable_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(TRAINABLES)


def method_descriptor(name: str) -> MethodDescriptor:
    """The descriptor of method ``name``; ValueError for an unknown name."""
    if name not in METHODS:
        raise ValueError(f"method: must be one of {list(METHODS)}, got {name!r}")
    return METHODS[name]


def register_method(descriptor: MethodDescriptor) -> None:
    """Register (or replace) the method ``descriptor.name``."""
    METHODS[descriptor.name] = descriptor
    register_trainable(descriptor.name, descriptor.trainable, options=descriptor.options)


def unregister_method(name: str) -> None:
    """Remove method ``name`` (its descriptor, trainable and options parser), if registered."""
    METHODS.pop(name, None)
    TRAINABLES.pop(name, None)
    OPTION_PARSERS.pop(name, None)


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


def method_parameters() -> dict[str, tuple[str, ...]]:
    """method -> the searched parameters its trainable reads."""
    return {name: tuple(m.parameters) for name, m in METHODS.items()}


def searched_parameters() -> tuple[str, ...]:
    """Every registered method's searched parameters, once each: the built-in parameters in
    their logging order (``trainables.methods.PARAMETER_DOMAINS``), then any others."""
    from trainables.methods import PARAMETER_DOMAINS

    used = dict.fromkeys(p for m in METHODS.values() for p in m.parameters)
    known = [p for p in PARAMETER_DOMAINS if p in used]
    return (*known, *(p for p in used if p not in PARAMETER_DOMAINS))


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
