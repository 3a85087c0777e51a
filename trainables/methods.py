"""What a compression method is, as data: one :class:`MethodDescriptor` per method.

A descriptor names the method's trainable and its options parser as ``"module:function"``
(imported only when used), the parameters a search space may name with the values its
trainable accepts, the parameters every trial needs, its default search space and preset,
and the metrics it reports beyond every method's. This module imports no torch: ``apc
validate`` reads the descriptors; a domain imports what it checks against when it is asked.
The registry (``trainables.registry``) holds them by name; adding a method is its module plus
its descriptor, registered with ``register_method``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trainables.matching_kinds import MATCHING_KINDS

__all__ = [
    "BUILTIN_METHODS",
    "PARAMETER_DOMAINS",
    "Domain",
    "MethodDescriptor",
    "Predicate",
]

#: Whether a searched value is one the trainable accepts.
Predicate = Callable[[Any], bool]
#: teacher width -> (rule, test): the values a trainable accepts (``student_width``'s depend
#: on the teacher's width; the others ignore it).
Domain = Callable[[int], tuple[str, Predicate]]


def _finite(value: object) -> bool:
    """A finite number: no bool, no string, no inf or NaN, no int beyond any float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _matching(_: int) -> tuple[str, Predicate]:
    return f"must be one of {list(MATCHING_KINDS)}", lambda v: v in MATCHING_KINDS


def _beta(_: int) -> tuple[str, Predicate]:
    return "must be a number >= 0", lambda v: _finite(v) and v >= 0


def _drop_p(_: int) -> tuple[str, Predicate]:
    return "must be a number in [0, 1)", lambda v: _finite(v) and 0 <= v < 1


def _prune_rate(_: int) -> tuple[str, Predicate]:
    return "must be a number in (0, 1)", lambda v: _finite(v) and 0 < v < 1


def _student_width(teacher_width: int) -> tuple[str, Predicate]:
    from trainables.models import WIDTH_DIVISORS

    widths = [w for w in range(1, max(WIDTH_DIVISORS) + 1) if teacher_width * w in WIDTH_DIVISORS]
    return (
        f"must be one of {widths} (teacher.width {teacher_width} times student_width must "
        f"be a width divisor, at most {max(WIDTH_DIVISORS)})",
        lambda v: not isinstance(v, bool) and v in widths,
    )


def _mode(_: int) -> tuple[str, Predicate]:
    from trainables.quantization import MODES

    return f"must be one of {list(MODES)}", lambda v: v in MODES


def _calibration_size(_: int) -> tuple[str, Predicate]:
    return (
        "must be an integer >= 1",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    )


def _observer(_: int) -> tuple[str, Predicate]:
    from trainables.quantization import OBSERVERS

    return f"must be one of {list(OBSERVERS)}", lambda v: v in OBSERVERS


#: The built-in methods' searched parameters and their domains, in the order trial runs log
#: them (``analysis.layout.SEARCHED_PARAMS``).
PARAMETER_DOMAINS: Final[dict[str, Domain]] = {
    "mode": _mode,
    "matching": _matching,
    "beta": _beta,
    "drop_p": _drop_p,
    "prune_rate": _prune_rate,
    "student_width": _student_width,
    "calibration_size": _calibration_size,
    "observer": _observer,
}


def _domains(*names: str) -> dict[str, Domain]:
    return {name: PARAMETER_DOMAINS[name] for name in names}


@dataclass(frozen=True)
class MethodDescriptor:
    """A compression method.

    Attributes:
        name: what a spec's ``method`` says.
        trainable: ``"module:function"`` of its Ray Tune function trainable
            ``trainable(config, setup: TrialSetup, teacher_state) -> None``.
        parameters: the searched parameters its trainable reads (a space may name no others),
            each with its domain.
        required: the parameters it needs in every trial.
        options: ``"module:function"`` parsing its ``method_options``,
            ``parse(options, *, epochs) -> (options object, problems)``; None: it takes none.
        search_space: its default (built-in) search space's name; None: a spec must give one.
        presets: the file names of its shipped specs in ``study/presets`` (the shapes one
            first, then the paper's setting on VOC 2012).
        metrics: the metrics it reports beyond every method's (``trainables.metric_names``).
    """

    name: str
    trainable: str
    parameters: Mapping[str, Domain] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    options: str | None = None
    search_space: str | None = None
    presets: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, value in (("trainable", self.trainable), ("options", self.options)):
            if value is not None and value.count(":") != 1:
                raise ValueError(f"{key}: must be 'module:function', got {value!r}")
        missing = [p for p in self.required if p not in self.parameters]
        if missing:
            raise ValueError(f"required: must be among its parameters, got {missing}")

    def domains(self, teacher_width: int) -> dict[str, tuple[str, Predicate]]:
        """Searched parameter -> (rule, test) for a teacher of ``teacher_width``."""
        return {name: domain(teacher_width) for name, domain in self.parameters.items()}


#: The methods apc ships, in registration order.
BUILTIN_METHODS: Final[tuple[MethodDescriptor, ...]] = (
    MethodDescriptor(
        name="distillation",
        trainable="trainables.distillation:distillation_trainable",
        parameters=_domains("matching", "beta", "drop_p", "student_width"),
        search_space="distillation",
        presets=("demo.yaml", "paper_kd.yaml"),
    ),
    MethodDescriptor(
        name="structured_pruning",
        trainable="trainables.structured_pruning:structured_pruning_trainable",
        parameters=_domains("matching", "beta", "drop_p", "prune_rate"),
        required=("prune_rate",),
        options="trainables.structured_pruning:parse_options",
        search_space="structured_pruning",
        presets=("structured_pruning.yaml", "paper_structured_pruning.yaml"),
    ),
    MethodDescriptor(
        name="unstructured_pruning",
        trainable="trainables.unstructured_pruning:unstructured_pruning_trainable",
        parameters=_domains("matching", "beta", "drop_p", "prune_rate"),
        required=("prune_rate",),
        options="trainables.unstructured_pruning:parse_options",
        search_space="unstructured_pruning",
        presets=("unstructured_pruning.yaml", "paper_unstructured_pruning.yaml"),
        metrics=("sparsity", "model_bytes_sparse"),
    ),
    MethodDescriptor(
        name="quantization",
        trainable="trainables.quantization:quantization_trainable",
        parameters=_domains("mode", "matching", "beta", "drop_p", "calibration_size", "observer"),
        required=("mode",),
        search_space="quantization",
        presets=("quantization.yaml",),
    ),
)
