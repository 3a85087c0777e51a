"""Argument checks shared by the data sets: one message style, "<name>: must ..., got <value>".

Options reach the data sets from YAML specs, so lists arrive where tuples are documented and
``true`` could arrive where a number is meant; these checks accept the former and reject the
latter (``bool`` is an ``int`` subclass in Python, hence the explicit exclusions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

__all__ = [
    "check_bool",
    "check_choice",
    "check_float_pair",
    "check_index",
    "check_int",
    "check_int_pair",
    "check_number",
    "check_optional_bool",
    "check_path",
]


def _is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float | np.integer[Any] | np.floating[Any]]:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _pair(name: str, value: object, kind: str) -> tuple[object, object]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name}: must be a (min, max) pair of {kind}, got {value!r}")
    return value[0], value[1]


def check_int(name: str, value: object, minimum: int) -> int:
    """An integer >= ``minimum``."""
    rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if not _is_int(value) or int(value) < minimum:
        raise ValueError(f"{name}: must be {rule}, got {value!r}")
    return int(value)


def check_number(name: str, value: object, lo: float, hi: float) -> float:
    """A number in the closed interval [lo, hi]."""
    if not _is_number(value) or not lo <= float(value) <= hi:
        raise ValueError(f"{name}: must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def check_int_pair(name: str, value: object, lo: int, hi: int) -> tuple[int, int]:
    """An inclusive (min, max) pair of integers with lo <= min <= max <= hi."""
    a, b = _pair(name, value, "integers")
    if not (_is_int(a) and _is_int(b)):
        raise ValueError(f"{name}: must be a (min, max) pair of integers, got {value!r}")
    ia, ib = int(a), int(b)
    if not lo <= ia <= ib <= hi:
        raise ValueError(f"{name}: must satisfy {lo} <= min <= max <= {hi}, got {value!r}")
    return ia, ib


def check_float_pair(
    name: str, value: object, lo: float, hi: float, *, open_low: bool = False
) -> tuple[float, float]:
    """A (min, max) pair of numbers with lo <= min <= max <= hi (lo < min if ``open_low``)."""
    a, b = _pair(name, value, "numbers")
    if not (_is_number(a) and _is_number(b)):
        raise ValueError(f"{name}: must be a (min, max) pair of numbers, got {value!r}")
    fa, fb = float(a), float(b)
    low_ok = lo < fa if open_low else lo <= fa
    if not (low_ok and fa <= fb <= hi):
        rule = f"{lo} {'<' if open_low else '<='} min <= max <= {hi}"
        raise ValueError(f"{name}: must satisfy {rule}, got {value!r}")
    return fa, fb


def check_bool(name: str, value: object) -> bool:
    """Exactly True or False (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be true or false, got {value!r}")
    return value


def check_optional_bool(name: str, value: object) -> bool | None:
    """True, False or None (None meaning "the split's default")."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name}: must be true, false or null (split default), got {value!r}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_index(index: object, length: int) -> int:
    """A sequence index (negative counts from the end) resolved into [0, length)."""
    if not _is_int(index):
        raise TypeError(f"index: must be an integer, got {type(index).__name__}")
    i = int(index)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index: must be in [0, {length}), got {index}")
    return i


def check_path(name: str, value: object, what: str) -> Path:
    """A filesystem path given as a string or ``os.PathLike``; ``what`` says what it names."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name}: must be the path of {what}, got {value!r}")
    return Path(value)
