"""Parse YAML search spaces and turn them into Optuna define-by-run functions."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from search_spaces.bounded_yaml import BoundedYamlError, read_bounded_yaml

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PARAMETER_TYPES",
    "Parameter",
    "SearchSpace",
    "builtin_search_space_names",
    "builtin_search_space_path",
    "is_builtin_reference",
    "load_search_space",
    "nearest_name",
    "parse_search_space",
    "resolve_path",
]

PARAMETER_TYPES: Final[tuple[str, ...]] = ("loguniform", "uniform", "int", "categorical")
_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "loguniform": ("type", "low", "high", "when"),
    "uniform": ("type", "low", "high", "when"),
    "int": ("type", "low", "high", "step", "log", "when"),
    "categorical": ("type", "choices", "when"),
}
Scalar = bool | int | float | str | None


@dataclass(frozen=True)
class Parameter:
    """One searched hyperparameter.

    Attributes:
        name: the config key the trainable reads.
        type: one of :data:`PARAMETER_TYPES`.
        low, high: bounds (inclusive) of numeric types.
        step: grid step of ``int`` parameters.
        log: sample ``int`` on a log scale.
        choices: values of ``categorical`` parameters.
        when: conditions: earlier parameter name -> the values for which this one is sampled.
    """

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: int = 1
    log: bool = False
    choices: tuple[Scalar, ...] = ()
    when: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter applies given the values chosen before it."""
        return all(
            name in values and values[name] in allowed for name, allowed in self.when.items()
        )

    def suggest(self, trial: optuna.Trial) -> Scalar:
        """Sample this parameter on an Optuna trial."""
        if self.type == "categorical":
            value: Scalar = trial.suggest_categorical(self.name, list(self.choices))
            return value
        assert self.low is not None
        assert self.high is not None
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=self.step, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.type == "loguniform")

    def check(self, value: object) -> str | None:
        """Why ``value`` lies outside this parameter's domain, or None if it lies inside."""
        if self.type == "categorical":
            if value in self.choices:
                return None
            return f"must be one of {list(self.choices)}, got {value!r}"
        assert self.low is not None
        assert self.high is not None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number in [{self.low:g}, {self.high:g}], got {value!r}"
        # An int is whole whatever its size (float() of a 400-digit one overflows).
        if self.type == "int" and isinstance(value, float) and not value.is_integer():
            return f"must be an integer in [{self.low:g}, {self.high:g}], got {value!r}"
        if not self.low <= value <= self.high:
            return f"must be in [{self.low:g}, {self.high:g}], got {value!r}"
        return None


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of parameters; conditions refer only to earlier ones."""

    parameters: tuple[Parameter, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def define_by_run(self, trial: optuna.Trial) -> None:
        """Optuna define-by-run function (OptunaSearch's ``space`` argument)."""
        chosen: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.is_active(chosen):
                chosen[parameter.name] = parameter.suggest(trial)

    def check_point(self, point: Mapping[str, Any], *, path: str) -> list[str]:
        """Every problem of an explicit configuration (an ``enqueue`` entry), with key paths.

        A configuration may leave out parameters; the sampler fills them in.
        """
        problems = []
        for key in point:
            if key not in self.names:
                problems.append(
                    f"{path}.{key}: is not a parameter of the search space "
                    f"{_did_you_mean(key, self.names)}(parameters: {', '.join(self.names)})"
                )
        chosen: dict[str, Any] = {}
        for parameter in self.parameters:
            active = parameter.is_active(chosen)
            if parameter.name in point:
                value = point[parameter.name]
                if not active:
                    problems.append(
                        f"{path}.{parameter.name}: does not apply when "
                        + " and ".join(f"{k} is {chosen.get(k)!r}" for k in parameter.when)
                        + f", got {value!r}"
                    )
                    continue
                reason = parameter.check(value)
                if reason:
                    problems.append(f"{path}.{parameter.name}: {reason}")
                chosen[parameter.name] = value
        return problems


def nearest_name(key: str, valid: Sequence[str]) -> str | None:
    """The valid name closest to a misspelt ``key`` (case-insensitive), if one is close."""
    lowered = {name.lower(): name for name in valid}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return lowered[close[0]]
    prefixed = [name for name in valid if name.lower().startswith(key.lower()[:3])]
    return prefixed[0] if len(prefixed) == 1 else None


def _did_you_mean(key: str, valid: Sequence[str]) -> str:
    close = nearest_name(key, valid)
    return f"(did you mean {close!r}?) " if close else ""


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _parse_parameter(
    name: str, data: object, earlier: Mapping[str, Parameter], path: str, problems: list[str]
) -> Parameter | None:
    here = f"{path}.{name}"
    if not isinstance(data, Mapping):
        problems.append(f"{here}: must be a mapping with a 'type', got {data!r}")
        return None
    kind = data.get("type")
    if kind not in PARAMETER_TYPES:
        problems.append(f"{here}.type: must be one of {list(PARAMETER_TYPES)}, got {kind!r}")
        return None
    start = len(problems)
    for key in data:
        if key not in _KEYS[kind]:
            problems.append(
                f"{here}.{key}: unknown key for type {kind} "
                f"{_did_you_mean(str(key), _KEYS[kind])}(valid: {', '.join(_KEYS[kind])})"
            )
    low = high = None
    step = 1
    log = False
    choices: tuple[Scalar, ...] = ()
    if kind == "categorical":
        raw = data.get("choices")
        if not isinstance(raw, list) or not raw:
            problems.append(f"{here}.choices: must be a non-empty list, got {raw!r}")
        elif any(isinstance(c, list | dict) for c in raw) or len(set(map(repr, raw))) < len(raw):
            problems.append(f"{here}.choices: must be distinct scalars, got {raw!r}")
        else:
            choices = tuple(raw)
    else:
        low, high = _number(data.get("low")), _number(data.get("high"))
        for key, value in (("low", low), ("high", high)):
            if value is None:
                problems.append(f"{here}.{key}: must be a finite number, got {data.get(key)!r}")
        if kind == "int":
            for key in ("low", "high"):
                value = data.get(key)
                if isinstance(value, float) and not value.is_integer():
                    problems.append(f"{here}.{key}: must be an integer, got {value!r}")
            raw_step = data.get("step", 1)
            if isinstance(raw_step, bool) or not isinstance(raw_step, int) or raw_step < 1:
                problems.append(f"{here}.step: must be a positive integer, got {raw_step!r}")
            else:
                step = raw_step
            raw_log = data.get("log", False)
            if not isinstance(raw_log, bool):
                problems.append(f"{here}.log: must be true or false, got {raw_log!r}")
            else:
                log = raw_log
        if low is not None and high is not None:
            if low > high:
                problems.append(f"{here}: low must not exceed high, got low={low:g} high={high:g}")
            if (kind == "loguniform" or log) and low <= 0:
                problems.append(f"{here}.low: must be positive on a log scale, got {low:g}")
    when: dict[str, tuple[Scalar, ...]] = {}
    raw_when = data.get("when", {})
    if not isinstance(raw_when, Mapping):
        problems.append(f"{here}.when: must map earlier parameters to lists of values")
    else:
        for other, values in raw_when.items():
            allowed = tuple(values) if isinstance(values, list) else (values,)
            if other not in earlier:
                problems.append(
                    f"{here}.when.{other}: must name a parameter defined before {name!r}, "
                    f"got {other!r}"
                )
                continue
            for value in allowed:
                reason = earlier[other].check(value)
                if reason:
                    problems.append(f"{here}.when.{other}: {reason}")
            when[str(other)] = allowed
    if len(problems) > start:
        return None
    return Parameter(name, kind, low, high, step, log, choices, when)


def parse_search_space(
    data: object, *, path: str = "search_space"
) -> tuple[SearchSpace, list[str]]:
    """Parse a search space mapping; returns it with every problem found (empty if valid)."""
    problems: list[str] = []
    if not isinstance(data, Mapping) or set(data) != {"parameters"}:
        keys = list(data) if isinstance(data, Mapping) else data
        problems.append(f"{path}: must be a mapping with the one key 'parameters', got {keys!r}")
        return SearchSpace(()), problems
    raw = data["parameters"]
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"{path}.parameters: must be a non-empty mapping, got {raw!r}")
        return SearchSpace(()), problems
    parsed: dict[str, Parameter] = {}
    for name, spec in raw.items():
        parameter = _parse_parameter(str(name), spec, parsed, f"{path}.parameters", problems)
        if parameter is not None:
            parsed[parameter.name] = parameter
    return SearchSpace(tuple(parsed.values())), problems


def builtin_search_space_names() -> tuple[str, ...]:
    """The names of the search spaces shipped in this package (``distillation``...)."""
    return tuple(sorted(p.stem for p in Path(__file__).parent.glob("*.yaml")))


def is_builtin_reference(reference: str) -> bool:
    """Whether ``reference`` names a built-in space: a bare name, without a ``/`` and without
    a ``.yaml``/``.yml`` ending (``distillation``). Anything else is a file path
    (``kd.yaml``, ``./kd``, ``spaces/kd.yaml``, ``~/kd.yaml``, ``/abs/kd.yaml``)."""
    return "/" not in reference and not reference.lower().endswith((".yaml", ".yml"))


def builtin_search_space_path(name: str) -> Path:
    """Path of a search space shipped in this package (``distillation`` -> distillation.yaml).

    Raises:
        ValueError: ``name`` is no built-in space's name.
    """
    names = builtin_search_space_names()
    if name not in names:
        raise ValueError(f"name: must be a built-in search space {list(names)}, got {name!r}")
    return Path(__file__).with_name(f"{name}.yaml")


def resolve_path(value: str, *, base_dir: Path) -> Path:
    """``value`` as an absolute path, by the one rule for paths that users write: ``~``
    expanded, a relative path taken from ``base_dir`` (a spec's folder), an absolute one kept.

    Raises:
        ValueError: the text names no path (the message says why: a NUL character, the
            home of an unknown user, a symlink loop).
    """
    if "\x00" in value:
        raise ValueError("it holds a NUL character")
    try:
        expanded = Path(value).expanduser()
    except RuntimeError:  # `~name/...` of no user here
        raise ValueError(f"no user's home is {value.partition('/')[0]!r}") from None
    try:
        return (base_dir / expanded).resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop, an unreadable folder
        raise ValueError(f"it cannot be resolved: {error}") from None


def _is_file(file: Path) -> bool:
    try:
        return file.is_file()
    except (OSError, ValueError):  # a name too long for the file system is no file either
        return False


def load_search_space(
    reference: object, *, base_dir: Path, path: str = "search_space"
) -> tuple[SearchSpace, list[str]]:
    """Load an inline mapping, a built-in space by its bare name or a YAML file.

    A string is a built-in space's name when it is bare (:func:`is_builtin_reference`), else
    a file path, relative to ``base_dir``, with ``~`` expanded (:func:`resolve_path`).
    """
    if isinstance(reference, Mapping):
        return parse_search_space(reference, path=path)
    if not isinstance(reference, str) or not reference:
        return SearchSpace(()), [
            f"{path}: must be a name, a YAML path or a mapping, got {reference!r}"
        ]
    names = builtin_search_space_names()
    if is_builtin_reference(reference):
        if reference not in names:
            close = nearest_name(reference, names)
            hint = f"did you mean {close!r}? A file path" if close else "a file path"
            return SearchSpace(()), [
                f"{path}: must be a built-in space ({', '.join(names)}) or a YAML file path, "
                f"got {reference!r} ({hint} has a '/' or a .yaml ending, e.g. ./{reference}.yaml)"
            ]
        file = builtin_search_space_path(reference)
    else:
        try:
            file = resolve_path(reference, base_dir=base_dir)
        except ValueError as error:
            return SearchSpace(()), [
                f"{path}: must be a YAML file path, got {reference!r} ({error})"
            ]
        if not _is_file(file):
            return SearchSpace(()), [
                f"{path}: must be an existing YAML file or a built-in space ({', '.join(names)}), "
                f"got {reference!r} (no file {file})"
            ]
    try:
        _, data = read_bounded_yaml(file)
    except BoundedYamlError as error:
        return SearchSpace(()), [f"{path}: {file} {error}"]
    return parse_search_space(data, path=path)
