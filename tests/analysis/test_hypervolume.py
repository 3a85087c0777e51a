from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import analysis
from analysis.hypervolume import (
    ReferencePointError,
    default_reference,
    hypervolume,
    hypervolume_history,
)
from analysis.pareto import Direction, ObjectivesError

DIRECTIONS: tuple[Direction, ...] = ("min", "max")


def grid_count(
    points: list[tuple[int, ...]], directions: list[Direction], reference: tuple[int, ...]
) -> int:
    """The definition on an integer grid: count the unit cells some point dominates.

    The cell with corner c spans [c, c + 1] per coordinate; it lies between a point p and the
    reference when, per objective, p <= c and c + 1 <= ref ("min") or ref <= c and c + 1 <= p
    ("max"). Integer points and reference make the count the exact hypervolume.
    """
    ranges = []
    for j, direction in enumerate(directions):
        values = [p[j] for p in points] + [reference[j]]
        ranges.append(
            range(min(values), reference[j])
            if direction == "min"
            else range(reference[j], max(values))
        )
    count = 0
    for cell in itertools.product(*ranges):
        for p in points:
            if all(
                (p[j] <= c) if d == "min" else (c + 1 <= p[j])
                for j, (c, d) in enumerate(zip(cell, directions, strict=True))
            ):
                count += 1
                break
    return count


def optuna_hypervolume(
    points: np.ndarray, directions: list[Direction], reference: np.ndarray
) -> float:
    """Optuna's WFG (a private API: this test fails when Optuna moves it)."""
    from optuna._hypervolume import compute_hypervolume

    sign = np.array([1.0 if d == "min" else -1.0 for d in directions])
    loss, ref = points * sign, reference * sign
    loss = loss[np.all(loss < ref, axis=1)]  # Optuna wants every point within the reference
    return float(compute_hypervolume(loss, ref)) if len(loss) else 0.0


def names(k: int) -> list[str]:
    return [f"o{j}" for j in range(k)]


@pytest.mark.parametrize("seed", range(120))
def test_matches_grid_counting_on_small_integer_sets(seed: int) -> None:
    """1 to 4 objectives, mixed directions, duplicates, points on and beyond the reference."""
    rng = random.Random(seed)
    k = [1, 2, 2, 3, 3, 4][seed % 6]
    span = 6 if k <= 3 else 4
    n = rng.randint(0, 9)
    points = [tuple(rng.randint(0, span) for _ in range(k)) for _ in range(n)]
    if points and rng.random() < 0.5:
        points.append(rng.choice(points))  # an exact duplicate
    directions = [rng.choice(DIRECTIONS) for _ in range(k)]
    reference = tuple(rng.randint(1, span - 1) for _ in range(k))
    expected = grid_count(points, directions, reference)
    objectives = dict(zip(names(k), directions, strict=True))
    table = pa.table(
        {name: pa.array([p[j] for p in points], pa.int64()) for j, name in enumerate(names(k))}
    )
    got = hypervolume(table, objectives, reference=dict(zip(names(k), reference, strict=True)))
    assert got == expected
    assert isinstance(got, float)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(6))
def test_matches_optuna_on_random_float_sets(k: int, seed: int) -> None:
    rng = np.random.default_rng(100 * k + seed)
    n = int(rng.choice([1, 7, 40, 150] if k < 5 else [1, 7, 30]))
    directions: list[Direction] = [DIRECTIONS[int(b)] for b in rng.integers(0, 2, k)]
    if seed % 2:  # a front-heavy set: points near a sphere, most of them non-dominated
        points = np.abs(rng.normal(size=(n, k)))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        points = np.where(np.array(directions) == "max", 1 - points, points)
        reference = np.where(np.array(directions) == "max", -0.1, 1.1)
    else:
        points = rng.normal(size=(n, k)) * rng.uniform(0.1, 1000, k)
        reference = np.quantile(points, 0.8, axis=0)  # some points beyond it
        reference = np.where(np.array(directions) == "max", -reference, reference)
    objectives = dict(zip(names(k), directions, strict=True))
    got = hypervolume(points, objectives, reference=dict(zip(names(k), reference, strict=True)))
    expected = optuna_hypervolume(points, directions, reference)
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    assert got > 0 or expected == 0


def test_exact_where_float_arithmetic_rounds() -> None:
    # Large integers: float64 would tie 2**62 with 2**62 + 1 and give 0 or 2**10.
    big = 2**62
    table = pa.table({"a": [big + 1], "b": [big - 3]})
    objectives: dict[str, Direction] = {"a": "min", "b": "max"}
    assert hypervolume(table, objectives, reference={"a": big + 3, "b": big - 5}) == 4.0
    # One correctly rounded result: that of the exact rationals the floats store.
    points = [[0.1, 0.7], [0.2, 0.3], [0.3, 0.1]]
    exact = Fraction(0)
    reference = Fraction(1.1)
    previous = reference
    for x, y in points:
        exact += (previous - Fraction(y)) * (reference - Fraction(x))
        previous = Fraction(y)
    got = hypervolume(points, {"x": "min", "y": "min"}, reference={"x": 1.1, "y": 1.1})
    assert got == float(exact)
    # Order of the rows does not matter, to the last bit.
    rng = np.random.default_rng(3)
    cloud = rng.random((200, 3))
    objectives3: dict[str, Direction] = {"a": "min", "b": "min", "c": "min"}
    ref3 = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert hypervolume(cloud, objectives3, reference=ref3) == hypervolume(
        cloud[::-1], objectives3, reference=ref3
    )


def test_mixed_directions_are_the_negated_problem() -> None:
    rng = np.random.default_rng(5)
    points = rng.random((60, 3))
    negated = points * np.array([1, -1, -1])
    a = hypervolume(
        points, {"x": "min", "y": "max", "z": "max"}, reference={"x": 1.2, "y": -0.2, "z": 0}
    )
    b = hypervolume(
        negated, {"x": "min", "y": "min", "z": "min"}, reference={"x": 1.2, "y": 0.2, "z": 0}
    )
    assert a == b > 0


def test_rows_with_a_missing_objective_are_left_out() -> None:
    base = pa.table({"map": [50.0, 60.0, 70.0], "params": [100, 400, 900], "who": ["a", "b", "c"]})
    objectives: dict[str, Direction] = {"map": "max", "params": "min"}
    reference = {"map": 40.0, "params": 1000}
    expected = hypervolume(base, objectives, reference=reference)
    assert expected == 10 * 900 + 10 * 600 + 10 * 100
    # Rows that would dominate everything, but miss an objective (null or NaN).
    extra = pa.table(
        {
            "map": pa.array([99.0, math.nan, None], pa.float64()),
            "params": pa.array([None, 1, 1], pa.int64()),
            "who": ["x", "y", "z"],
        }
    )
    with_missing = pa.concat_tables([extra.slice(0, 2), base, extra.slice(2)])
    assert hypervolume(with_missing, objectives, reference=reference) == expected
    assert hypervolume(with_missing.slice(0, 2), objectives, reference=reference) == 0.0


def test_points_not_strictly_better_than_the_reference_contribute_nothing() -> None:
    objectives: dict[str, Direction] = {"a": "min", "b": "max"}
    reference = {"a": 10.0, "b": 0.0}
    inside = [[2.0, 5.0], [6.0, 8.0]]
    expected = hypervolume(inside, objectives, reference=reference)
    assert expected == 8 * 5 + 4 * 3
    outside = [[11.0, 100.0], [-5.0, -1.0], [10.0, 50.0], [-5.0, 0.0], [1e300, 1e300]]
    assert hypervolume(inside + outside, objectives, reference=reference) == expected
    assert hypervolume(outside, objectives, reference=reference) == 0.0


def test_infinitely_good_points_give_inf_and_infinitely_bad_ones_nothing() -> None:
    objectives: dict[str, Direction] = {"a": "min", "b": "max"}
    reference = {"a": 1.0, "b": 0.0}
    assert hypervolume([[0.0, 1.0], [-math.inf, 0.5]], objectives, reference=reference) == math.inf
    assert hypervolume([[0.0, 1.0], [-math.inf, -1.0]], objectives, reference=reference) == 1.0
    assert hypervolume([[0.0, 1.0], [math.inf, 5.0]], objectives, reference=reference) == 1.0
    # Finite but past the largest float.
    assert hypervolume([[-1e300, 1e300]], objectives, reference=reference) == math.inf


def test_input_forms_agree() -> None:
    rows: list[dict[str, Any]] = [
        {"map": 55.5, "params": 300, "note": "a"},
        {"map": 61.0, "params": 800, "note": "b"},
        {"map": 48.25, "params": 120, "note": "c"},
    ]
    objectives: dict[str, Direction] = {"params": "min", "map": "max"}
    reference = {"map": 40, "params": 1000}
    table = pa.Table.from_pylist(rows)
    expected = hypervolume(table, objectives, reference=reference)
    assert expected > 0
    assert hypervolume(rows, objectives, reference=reference) == expected
    as_list = [[r["params"], r["map"]] for r in rows]  # columns in the objectives' order
    assert hypervolume(as_list, objectives, reference=reference) == expected
    assert hypervolume(np.array(as_list), objectives, reference=reference) == expected
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    float32 = table.set_column(0, "map", table["map"].cast(pa.float32()))
    assert hypervolume(chunked, objectives, reference=reference) == expected
    assert hypervolume(float32, objectives, reference=reference) == expected  # exact in float32
    assert hypervolume([], objectives, reference=reference) == 0.0
    assert hypervolume([[None, 50.0]], objectives, reference=reference) == 0.0


def test_one_objective_is_the_best_distance() -> None:
    table = pa.table({"loss": [0.5, 0.25, None, 2.0]})
    assert hypervolume(table, {"loss": "min"}, reference={"loss": 1.0}) == 0.75


@pytest.mark.parametrize("k", [2, 3, 4])
def test_history_is_the_hypervolume_of_each_prefix(k: int) -> None:
    rng = np.random.default_rng(k)
    n = 60
    values = rng.random((n, k))
    values[rng.random((n, k)) < 0.05] = np.nan  # some trials failed
    directions: list[Direction] = [DIRECTIONS[j % 2] for j in range(k)]
    objectives = dict(zip(names(k), directions, strict=True))
    table = pa.table({name: values[:, j] for j, name in enumerate(names(k))})
    reference = default_reference(table, objectives)
    history = hypervolume_history(table, objectives, reference=reference)
    assert [trials for trials, _ in history] == list(range(1, n + 1))
    curve = [value for _, value in history]
    assert all(a <= b for a, b in itertools.pairwise(curve))
    assert curve[-1] == hypervolume(table, objectives, reference=reference)
    for trials in (1, 2, 7, 30, 59):
        assert curve[trials - 1] == hypervolume(
            table.slice(0, trials), objectives, reference=reference
        )
    assert curve[0] < curve[-1]


def test_history_order_by_a_column_and_edge_cases() -> None:
    table = pa.table(
        {"trial": [3, 1, None, 2], "x": [1.0, 3.0, 0.0, 2.0], "y": [3.0, 1.0, 0.0, 2.0]}
    )
    objectives: dict[str, Direction] = {"x": "min", "y": "min"}
    reference = {"x": 4.0, "y": 4.0}
    # Rows by trial: (3, 1), (2, 2), (1, 3), then the null trial (0, 0), which dominates all.
    assert hypervolume_history(table, objectives, reference=reference, order_by="trial") == [
        (1, 3.0),
        (2, 5.0),
        (3, 6.0),
        (4, 16.0),
    ]
    assert hypervolume_history(table, objectives, reference=reference) == [
        (1, 3.0),
        (2, 5.0),
        (3, 16.0),
        (4, 16.0),
    ]
    assert hypervolume_history(table.slice(0, 0), objectives, reference=reference) == []
    unbounded = pa.table({"x": [1.0, -math.inf, 2.0], "y": [1.0, 1.0, 0.0]})
    assert hypervolume_history(unbounded, objectives, reference=reference) == [
        (1, 9.0),
        (2, math.inf),
        (3, math.inf),
    ]
    with pytest.raises(ValueError, match="order_by: must be 'start'") as raised:
        hypervolume_history(table, objectives, reference=reference, order_by="started")
    assert str(raised.value) == (
        "order_by: must be 'start' (the table's row order) or a column of the table "
        "(trial, x, y), got 'started'"
    )


def test_default_reference_pushes_the_worst_value_out_by_a_tenth_of_the_range() -> None:
    table = pa.table(
        {
            "map": [50.0, 70.0, 60.0, None, 99.0],
            "params": [100, 1100, 600, 1, None],
            "flat": [2.0, 2.0, 2.0, 2.0, 2.0],
            "zero": [0, 0, 0, 0, 0],
        }
    )
    objectives: dict[str, Direction] = {"map": "max", "params": "min", "flat": "min", "zero": "max"}
    reference = default_reference(table, objectives)
    # Rows 4 and 5 miss an objective: they take no part.
    assert reference == {"map": 48.0, "params": 1200.0, "flat": 2.2, "zero": -0.1}
    assert list(reference) == list(objectives)
    # Every trial of the front counts, the extreme ones included.
    front = hypervolume(table.slice(0, 3), objectives, reference=reference)
    assert front > hypervolume(table.slice(1, 2), objectives, reference=reference) > 0
    # A huge worst value with a tiny range: the margin must not round away.
    huge = pa.table({"a": [1e20, 1e20 + 2**14]})
    assert default_reference(huge, {"a": "min"})["a"] > 1e20 + 2**14
    assert hypervolume(huge, {"a": "min"}, reference=default_reference(huge, {"a": "min"})) > 0
    # Infinite values are left out of the range.
    assert default_reference(pa.table({"a": [1.0, 3.0, math.inf]}), {"a": "min"}) == {"a": 3.2}


def test_default_reference_needs_a_complete_row() -> None:
    table = pa.table({"a": [1.0, None], "b": [None, 2.0], "c": [math.inf, 1.0]})
    with pytest.raises(ValueError, match="default_reference") as raised:
        default_reference(table, {"a": "min", "b": "max"})
    assert str(raised.value) == (
        "default_reference: needs a finite value of every objective in at least one row that "
        "has all of them; none for 'a', 'b' (0 of 2 rows have every objective)"
    )
    with pytest.raises(ValueError, match="none for 'c'"):
        default_reference(table.slice(0, 1), {"a": "min", "c": "min"})


@pytest.mark.parametrize(
    ("objectives", "message"),
    [
        ({}, "objectives: must map at least one column to min or max, got {}"),
        ({"mapp": "max"}, "objectives: unknown column 'mapp' (columns: map, params, name)"),
        ({"map": "up"}, "objectives.map: must be min or max, got 'up'"),
        ({"name": "max"}, "objectives.name: must be a numeric column, got string"),
    ],
)
def test_bad_objectives_name_the_rule_and_the_value(
    objectives: dict[str, str], message: str
) -> None:
    table = pa.table({"map": [1.0], "params": [2], "name": ["a"]})
    reference = dict.fromkeys(objectives, 0.0)
    for call in (
        lambda: hypervolume(table, objectives, reference=reference),  # type: ignore[arg-type]
        lambda: hypervolume_history(table, objectives, reference=reference),  # type: ignore[arg-type]
        lambda: default_reference(table, objectives),  # type: ignore[arg-type]
    ):
        with pytest.raises(ObjectivesError) as raised:
            call()
        assert str(raised.value) == message
        assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("reference", "problems"),
    [
        ({"map": 0.0}, ["reference: no value for objective 'params'"]),
        (
            {"map": 0.0, "params": 10, "": 1.0, "flops": 2},
            [
                "reference: '' is not an objective (objectives: map, params)",
                "reference: 'flops' is not an objective (objectives: map, params)",
            ],
        ),
        (
            {"map": math.nan, "params": "10"},
            [
                "reference.map: must be a finite number, got nan",
                "reference.params: must be a finite number, got '10'",
            ],
        ),
        (
            {"map": True, "params": -math.inf},
            [
                "reference.map: must be a finite number, got True",
                "reference.params: must be a finite number, got -inf",
            ],
        ),
        ([0.0, 10.0], ["reference: must map each objective to a number, got [0.0, 10.0]"]),
    ],
)
def test_bad_references_name_every_problem(reference: Any, problems: list[str]) -> None:
    table = pa.table({"map": [1.0], "params": [2]})
    objectives: dict[str, Direction] = {"map": "max", "params": "min"}
    for call in (hypervolume, hypervolume_history):
        with pytest.raises(ReferencePointError) as raised:
            call(table, objectives, reference=reference)
        assert raised.value.problems == problems
        assert str(raised.value) == "; ".join(problems)
        assert isinstance(raised.value, ValueError)


def test_numpy_and_exact_reference_values_are_accepted() -> None:
    from decimal import Decimal

    objectives: dict[str, Direction] = {"a": "min", "b": "min"}
    points = [[1, 1]]
    for reference in (
        {"a": np.float32(3.0), "b": np.int64(3)},
        {"a": Fraction(3), "b": Decimal("3")},
    ):
        assert hypervolume(points, objectives, reference=reference) == 4.0  # type: ignore[arg-type]


def test_bad_points_name_the_shape() -> None:
    with pytest.raises(ValueError, match="points: ") as raised:
        hypervolume([[1.0, 2.0, 3.0]], {"a": "min", "b": "min"}, reference={"a": 0, "b": 0})
    assert str(raised.value) == (
        "points: must be a table, a list of rows or an array of shape (n, 2) "
        "(one column per objective: a, b), got shape (1, 3)"
    )


def test_reexported_from_the_package() -> None:
    for name in ("hypervolume", "hypervolume_history", "default_reference", "ReferencePointError"):
        assert name in analysis.__all__
        assert getattr(analysis, name) is globals()[name]
