"""Hypervolume of a study's trials: how much of objective space its Pareto front dominates.

``hypervolume`` measures the region that at least one trial dominates and that itself
dominates a reference point (a box per trial, from the trial to the reference; their union),
in the objectives' own units: the product of the objectives' units, e.g. %·params for
``map:max, params:min``. Larger is better. ``hypervolume_history`` gives it over the first k
trials in run order (the curve "hypervolume over trials"), and ``default_reference`` picks a
reference point when the user names none.

Which points count. Rows with a null or NaN objective take no part, as in
``analysis.pareto.pareto_front``. A point counts only when it is strictly better than the
reference in every objective; any other point spans no volume. A point that counts and is
infinitely good in some objective (``-inf`` for "min", ``inf`` for "max") makes the
hypervolume ``inf``. The reference must be finite.

Exactness. Every value is read as the exact rational it stores (an integer column as an
integer, a float as its binary fraction, no float64 round-off of large integers), each
point's distance to the reference per objective is scaled to an integer with one common
denominator per objective, and the volume is computed with Python integers: no rounding
happens until the one correctly rounded division at the end. So the result is the exact
hypervolume rounded to the nearest float (``inf`` past the largest float), equal points
sets give equal results whatever their order, and ``hypervolume_history`` is exactly
non-decreasing and ends at ``hypervolume`` of all rows.

Algorithm (the points, measured from the reference, as boxes anchored at the origin):

- 1 objective: the largest box. 2: sort by the first coordinate, sweep: O(n log n).
- 3: sweep the third coordinate from high to low, inserting each point into the staircase of
  the first two kept sorted with ``bisect``, its area updated locally: O(n log n) comparisons
  (Beume et al. 2009, "On the complexity of computing the hypervolume indicator").
- 4 or more: WFG (While, Bradstreet and Barone 2012, "A fast way of calculating exact
  hypervolumes") with its slicing of the last objective: with the non-dominated points
  sorted by the last coordinate ascending, each point's exclusive volume against the later
  ones is its last coordinate times (its own (d-1)-volume minus the (d-1)-volume of the later
  points limited to its box, non-dominated ones only); those recurse down to the 3-d sweep.
  Exponential in the number of objectives at worst, fast for the few (2 to 5) of a study.

``hypervolume_history`` adds each new non-dominated point's exclusive volume against the
front so far (WFG's exclusive hypervolume, exact in integers): one limit-set volume per
point that improves the front, nothing for the others.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from analysis.pareto import Direction, _objective_columns

__all__ = [
    "ReferencePointError",
    "default_reference",
    "hypervolume",
    "hypervolume_history",
]

#: A table of trials, a list of row mappings, or an array with one column per objective.
TableOrPoints: TypeAlias = "pa.Table | Sequence[Mapping[str, Any]] | npt.ArrayLike"

#: The row order ``hypervolume_history`` uses by default: the table's own (start order).
START: Final = "start"
#: How far ``default_reference`` pushes the reference beyond the worst value, per range.
MARGIN: Final = Fraction(1, 10)

_Point: TypeAlias = tuple[int, ...]


class ReferencePointError(ValueError):
    """A reference point is wrong; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def hypervolume(
    table_or_points: TableOrPoints,
    objectives: Mapping[str, Direction],
    *,
    reference: Mapping[str, float],
) -> float:
    """The hypervolume the rows dominate, bounded by ``reference``, in the objectives' units.

    ``table_or_points`` is a ``pyarrow.Table`` (e.g. from ``analysis.runs.load_trials``), a
    list of row mappings, or an array-like of shape (n, number of objectives) whose columns
    are the objectives in the order ``objectives`` names them. ``objectives`` maps a numeric
    column to ``"min"`` or ``"max"``; ``reference`` maps each objective to a finite number
    (see ``default_reference``). Rows with a missing objective, and points not strictly
    better than the reference in every objective, contribute nothing.

    Raises ``ObjectivesError`` (a ``ValueError``) for a bad objective (unknown or
    non-numeric column, direction not min or max) and ``ReferencePointError`` (a
    ``ValueError``) for a reference that lacks an objective, names a non-objective or holds
    a value that is not a finite number.
    """
    table = _as_table(table_or_points, objectives)
    points, infinite, denominator = _points(table, objectives, reference)
    if any(infinite):
        return math.inf
    return _to_float(_volume([p for p in points if p is not None]), denominator)


def hypervolume_history(
    table: TableOrPoints,
    objectives: Mapping[str, Direction],
    *,
    reference: Mapping[str, float],
    order_by: str = START,
) -> list[tuple[int, float]]:
    """``(k, hypervolume of the first k trials)`` for k = 1 .. number of rows, in run order.

    ``order_by="start"`` keeps the table's row order, which for a ``load_trials`` table is
    the order the trials started in; any other value names a column to sort the rows by
    (ascending, stable, NaNs then nulls last), e.g. ``"trial"``. k counts every row, those
    with a missing objective included (they add nothing), so k is "trials so far". The
    values are exact hypervolumes rounded once, hence non-decreasing, and the last equals
    ``hypervolume(table, objectives, reference=reference)``. Use one reference for the whole
    history (e.g. ``default_reference`` over all trials) so that the values compare.

    Raises what ``hypervolume`` raises, and ``ValueError`` for an unknown ``order_by``.
    """
    table = _as_table(table, objectives)
    points, infinite, denominator = _points(table, objectives, reference)
    order = _row_order(table, order_by)
    history: list[tuple[int, float]] = []
    front: list[_Point] = []
    total = 0
    unbounded = False
    for k, row in enumerate(order, start=1):
        point = points[row]
        if infinite[row]:
            unbounded = True
        elif point is not None and not unbounded and not _dominated_by(point, front):
            total += math.prod(point) - _volume([_meet(q, point) for q in front])
            front = [q for q in front if not _weakly_dominates(point, q)]
            front.append(point)
        history.append((k, math.inf if unbounded else _to_float(total, denominator)))
    return history


def default_reference(
    table: TableOrPoints, objectives: Mapping[str, Direction]
) -> dict[str, float]:
    """A reference point for ``hypervolume`` when the user gives none.

    Per objective: the worst value over the trials, pushed further out by 10% of the range
    (worst minus best) of that objective, i.e. ``max + 0.1 * (max - min)`` for "min" and
    ``min - 0.1 * (max - min)`` for "max"; when every trial has the same value, by 10% of its
    magnitude, or by 1 when it is 0. Only the trials ``hypervolume`` counts (every objective
    present) and only finite values take part.

    Why: a point counts only when it is strictly better than the reference in every
    objective, so the nadir point itself (the worst values) would drop the extreme trials of
    the front and their whole contribution; the margin keeps every trial of the front in the
    hypervolume, with a weight that does not depend on the units because it scales with each
    objective's own range. 10% is the usual choice: BoTorch's ``infer_reference_point``
    takes the nadir minus 0.1 times the range, citing Ishibuchi et al. (2011), who found 0.1
    a robust multiplier. Computed from all trials, it stays fixed along
    ``hypervolume_history``; a new trial worse than every earlier one moves it.

    Raises ``ObjectivesError`` for a bad objective and ``ValueError`` when some objective
    has no finite value in any row that has every objective.
    """
    table = _as_table(table, objectives)
    columns = _objective_columns(table, objectives)
    valid = np.ones(table.num_rows, dtype=bool)
    for _, present, _ in columns:
        valid &= present
    reference: dict[str, float] = {}
    empty: list[str] = []
    for name, (values, _, maximize) in zip(objectives, columns, strict=True):
        finite = [v for v in values[valid].tolist() if math.isfinite(v)]
        if not finite:
            empty.append(name)
            continue
        low, high = Fraction(min(finite)), Fraction(max(finite))
        worst = low if maximize else high
        spread = high - low or abs(worst) or Fraction(1)
        value = float(worst - MARGIN * spread if maximize else worst + MARGIN * spread)
        if (value >= worst) if maximize else (value <= worst):  # the margin rounded away
            value = math.nextafter(float(worst), -math.inf if maximize else math.inf)
        reference[name] = value
    if empty:
        raise ValueError(
            "default_reference: needs a finite value of every objective in at least one row "
            f"that has all of them; none for {', '.join(map(repr, empty))} "
            f"({int(valid.sum())} of {table.num_rows} rows have every objective)"
        )
    return reference


# --- input -------------------------------------------------------------------------------


def _as_table(table_or_points: TableOrPoints, objectives: Mapping[str, Direction]) -> pa.Table:
    if isinstance(table_or_points, pa.Table):
        return table_or_points
    if (
        isinstance(table_or_points, Sequence)
        and len(table_or_points) > 0
        and all(isinstance(row, Mapping) for row in table_or_points)
    ):
        return pa.Table.from_pylist(list(table_or_points))
    names = list(objectives) if isinstance(objectives, Mapping) else []
    array = np.asarray(table_or_points)
    if array.size == 0 and array.ndim <= 2:
        array = array.reshape(0, len(names))
    if array.ndim != 2 or array.shape[1] != len(names):
        raise ValueError(
            f"points: must be a table, a list of rows or an array of shape (n, {len(names)}) "
            f"(one column per objective: {', '.join(names)}), got shape {array.shape}"
        )
    if array.dtype == object:
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("points: every value must be a number or None") from None
    return pa.table({name: np.ascontiguousarray(array[:, j]) for j, name in enumerate(names)})


def _row_order(table: pa.Table, order_by: str) -> list[int]:
    if order_by == START:
        return list(range(table.num_rows))
    if order_by not in table.column_names:
        raise ValueError(
            f"order_by: must be {START!r} (the table's row order) or a column of the table "
            f"({', '.join(table.column_names)}), got {order_by!r}"
        )
    values = table.column(order_by).to_pylist()

    def key(row: int) -> tuple[int, Any]:
        value = values[row]
        if value is None:
            return (2, 0)
        if isinstance(value, float) and math.isnan(value):
            return (1, 0)
        return (0, value)

    return sorted(range(table.num_rows), key=key)  # stable: ties keep the row order


def _reference_problems(
    objectives: Mapping[str, Direction], reference: object
) -> tuple[list[str], dict[str, Fraction]]:
    if not isinstance(reference, Mapping):
        return [f"reference: must map each objective to a number, got {reference!r}"], {}
    problems: list[str] = []
    values: dict[str, Fraction] = {}
    for name in objectives:
        if name not in reference:
            problems.append(f"reference: no value for objective {name!r}")
            continue
        value = reference[name]
        if isinstance(value, np.generic):
            value = value.item()
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | Fraction | Decimal)
            or not math.isfinite(value)
        ):
            problems.append(f"reference.{name}: must be a finite number, got {value!r}")
        else:
            values[name] = Fraction(value)
    for key in reference:
        if key not in objectives:
            problems.append(
                f"reference: {key!r} is not an objective (objectives: {', '.join(objectives)})"
            )
    return problems, values


def _points(
    table: pa.Table, objectives: Mapping[str, Direction], reference: Mapping[str, float]
) -> tuple[list[_Point | None], list[bool], int]:
    """Each row as its integer distances to the reference, scaled by ``denominator``.

    ``None`` for a row that contributes nothing (a missing objective, or not strictly
    better than the reference everywhere); ``infinite[row]`` for a row that does contribute
    and is infinitely better in some objective.
    """
    columns = _objective_columns(table, objectives)
    problems, ref = _reference_problems(objectives, reference)
    if problems:
        raise ReferencePointError(problems)
    n = table.num_rows
    alive = np.ones(n, dtype=bool)
    for _, present, _ in columns:
        alive &= present
    infinite = [False] * n
    gains: list[list[int]] = []
    denominator = 1
    for name, (values, _, maximize) in zip(objectives, columns, strict=True):
        r = ref[name]
        exact: dict[int, tuple[int, int]] = {}
        for row, value in enumerate(values.tolist()):
            if not alive[row]:
                continue
            if isinstance(value, float) and math.isinf(value):
                if (value > 0) == maximize:
                    infinite[row] = True
                else:
                    alive[row] = False
                continue
            exact[row] = value.as_integer_ratio()
        # One denominator for the objective: every distance to the reference is an integer.
        scale = math.lcm(r.denominator, *(den for _, den in exact.values()))
        sign = 1 if maximize else -1
        column = [0] * n
        for row, (num, den) in exact.items():
            # The distance to the reference in the better direction: x - r or r - x.
            gain = sign * (num * (scale // den) - r.numerator * (scale // r.denominator))
            if gain > 0:
                column[row] = gain
            else:
                alive[row] = False
        gains.append(column)
        denominator *= scale
    points: list[_Point | None] = [None] * n
    for row in range(n):
        if not alive[row]:
            infinite[row] = False
        elif not infinite[row]:
            points[row] = tuple(g[row] for g in gains)
    return points, infinite, denominator


def _to_float(volume: int, denominator: int) -> float:
    try:
        return volume / denominator  # int / int: correctly rounded
    except OverflowError:
        return math.inf


# --- volume of a union of origin-anchored boxes, in integers -----------------------------


def _volume(points: list[_Point]) -> int:
    """Volume of the union of the boxes [0, p] (every coordinate of every p positive)."""
    if not points:
        return 0
    d = len(points[0])
    if d == 1:
        return max(p[0] for p in points)
    if d == 2:
        return _volume_2d(points)
    if d == 3:
        return _volume_3d(points)
    return _volume_wfg(_nondominated(points))


def _volume_2d(points: list[_Point]) -> int:
    total = 0
    top = 0
    for x, y in sorted(points, reverse=True):  # x descending: each adds the strip above `top`
        if y > top:
            total += x * (y - top)
            top = y
    return total


def _volume_3d(points: list[_Point]) -> int:
    ordered = sorted(points, key=operator.itemgetter(2), reverse=True)
    xs: list[int] = []  # the 2-d staircase of the points so far: x ascending, y descending
    ys: list[int] = []
    area = 0
    total = 0
    for i, (x, y, z) in enumerate(ordered):
        area += _insert(xs, ys, x, y)
        below = ordered[i + 1][2] if i + 1 < len(ordered) else 0
        total += area * (z - below)
    return total


def _insert(xs: list[int], ys: list[int], x: int, y: int) -> int:
    """Add (x, y) to the staircase; returns the area it adds."""
    lo = bisect.bisect_left(xs, x)
    if lo < len(xs) and ys[lo] >= y:
        return 0  # dominated (weakly) by the first point at or right of x
    hi = lo + 1 if lo < len(xs) and xs[lo] == x else lo
    start = lo
    while start > 0 and ys[start - 1] <= y:
        start -= 1
    # Points start .. hi - 1 are dominated by (x, y). Over x' in (left, x] the height becomes
    # y; before, it was theirs, then that of the first point right of x.
    left = xs[start - 1] if start > 0 else 0
    right_y = ys[hi] if hi < len(xs) else 0
    old = 0
    previous = left
    for k in range(start, hi):
        old += (xs[k] - previous) * ys[k]
        previous = xs[k]
    old += (x - previous) * right_y
    xs[start:hi] = [x]
    ys[start:hi] = [y]
    return (x - left) * y - old


def _volume_wfg(points: list[_Point]) -> int:
    """WFG over non-dominated points, slicing the last coordinate (see the module docstring)."""
    ordered = sorted(points, key=operator.itemgetter(-1))
    total = 0
    for i, point in enumerate(ordered):
        head = point[:-1]
        limited = [_meet(q[:-1], head) for q in ordered[i + 1 :]]
        total += point[-1] * (math.prod(head) - _volume(limited))
    return total


def _meet(a: _Point, b: _Point) -> _Point:
    """The intersection of the boxes [0, a] and [0, b] is [0, min(a, b)]."""
    return tuple(map(min, a, b))


def _weakly_dominates(a: _Point, b: _Point) -> bool:
    return all(map(operator.ge, a, b))


def _dominated_by(point: _Point, front: list[_Point]) -> bool:
    return any(_weakly_dominates(q, point) for q in front)


def _nondominated(points: list[_Point]) -> list[_Point]:
    """The points no other point weakly dominates, one of each duplicate."""
    kept: list[_Point] = []
    # Lexicographically descending: a point's dominators all come before it.
    for point in sorted(set(points), reverse=True):
        if not _dominated_by(point, kept):
            kept.append(point)
    return kept
