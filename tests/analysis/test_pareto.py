from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from analysis import pareto as pareto_module
from analysis.pareto import (
    Direction,
    ObjectivesError,
    pareto_front,
    pareto_mask,
    parse_objectives,
)

DIRECTIONS: tuple[Direction, ...] = ("min", "max")


def brute_force_mask(rows: list[dict[str, Any]], objectives: dict[str, Direction]) -> list[bool]:
    """The definition, pair by pair in plain Python."""

    def missing(value: Any) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    def no_worse(a: Any, b: Any, direction: Direction) -> bool:
        return bool(a >= b if direction == "max" else a <= b)

    def better(a: Any, b: Any, direction: Direction) -> bool:
        return bool(a > b if direction == "max" else a < b)

    valid = [not any(missing(row[name]) for name in objectives) for row in rows]
    keep = []
    for i, row in enumerate(rows):
        if not valid[i]:
            keep.append(False)
            continue
        dominated = False
        for j, other in enumerate(rows):
            if i == j or not valid[j]:
                continue
            if all(no_worse(other[n], row[n], d) for n, d in objectives.items()) and any(
                better(other[n], row[n], d) for n, d in objectives.items()
            ):
                dominated = True
                break
        keep.append(not dominated)
    return keep


def random_table(rng: random.Random) -> tuple[pa.Table, dict[str, Direction]]:
    """Few distinct values (heavy ties, exact duplicates), nulls and NaNs, int and float columns,
    split into several chunks."""
    n = rng.choice([0, 1, 2, 3, rng.randint(4, 40), rng.randint(40, 150)])
    k = rng.randint(1, 4)
    columns: dict[str, list[object]] = {}
    types: dict[str, pa.DataType] = {}
    for c in range(k):
        levels = rng.randint(1, 6)
        kind = rng.choice(["int", "float", "float32"])
        missing = rng.choice([0.0, 0.0, 0.1, 0.3])
        values: list[object] = []
        for _ in range(n):
            if rng.random() < missing:
                values.append(None if kind == "int" or rng.random() < 0.5 else math.nan)
            elif kind == "int":
                values.append(rng.randint(-levels, levels))
            else:
                values.append(rng.randint(0, levels) / 4 - 0.5)
        columns[f"m{c}"] = values
        types[f"m{c}"] = {"int": pa.int64(), "float": pa.float64(), "float32": pa.float32()}[kind]
    columns["label"] = [f"row{i}" for i in range(n)]
    types["label"] = pa.string()
    schema = pa.schema([(name, types[name]) for name in columns])
    table = pa.Table.from_pydict(columns, schema=schema)
    if n > 3:  # several chunks, as tables read back or concatenated have
        cut = sorted(rng.sample(range(1, n), 2))
        table = pa.concat_tables(
            [table.slice(0, cut[0]), table.slice(cut[0], cut[1] - cut[0]), table.slice(cut[1])]
        )
    objectives = {f"m{c}": rng.choice(DIRECTIONS) for c in range(k)}
    if k > 1 and rng.random() < 0.3:  # objectives in another order than the columns
        objectives = dict(reversed(list(objectives.items())))
    return table, objectives


@pytest.mark.parametrize("seed", range(400))
def test_front_matches_brute_force_on_random_tables(seed: int) -> None:
    table, objectives = random_table(random.Random(seed))
    expected = brute_force_mask(table.to_pylist(), objectives)
    front = pareto_front(table, objectives)
    assert front.to_pylist() == table.filter(pa.array(expected, pa.bool_())).to_pylist()
    assert front.schema == table.schema
    assert pareto_mask(table, objectives).tolist() == expected


@pytest.mark.parametrize("seed", range(40))
def test_small_blocks_give_the_same_front(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 1..5 points, so fronts straddle block boundaries and grow between blocks."""
    rng = random.Random(1000 + seed)
    monkeypatch.setattr(pareto_module, "_BLOCK_ROWS", rng.randint(1, 5))
    if seed % 2:
        monkeypatch.setattr(pareto_module, "_BLOCK_ELEMENTS", rng.randint(1, 30))
    table, objectives = random_table(rng)
    expected = brute_force_mask(table.to_pylist(), objectives)
    assert pareto_mask(table, objectives).tolist() == expected


def test_exact_duplicates_are_all_kept_and_order_is_kept() -> None:
    table = pa.table(
        {
            "name": ["a", "b", "c", "d", "e", "f"],
            "acc": [0.9, 0.8, 0.9, 0.95, 0.95, 0.7],
            "size": [10, 5, 10, 20, 20, 5],
        }
    )
    front = pareto_front(table, {"acc": "max", "size": "min"})
    assert front.column("name").to_pylist() == ["a", "b", "c", "d", "e"]
    same = pa.table({"x": [1.0, 1.0, 1.0], "y": [2, 2, 2]})
    assert pareto_front(same, {"x": "min", "y": "max"}).num_rows == 3


def test_one_objective_keeps_every_row_with_the_best_value() -> None:
    table = pa.table({"v": [3.0, 1.0, None, 1.0, float("nan"), 2.0]})
    assert pareto_mask(table, {"v": "min"}).tolist() == [False, True, False, True, False, False]
    assert pareto_mask(table, {"v": "max"}).tolist() == [True, False, False, False, False, False]


def test_rows_with_a_missing_objective_are_left_out_and_do_not_dominate() -> None:
    # Row 0 would dominate everything, but its size is missing.
    table = pa.table({"acc": [1.0, 0.5, 0.6, float("nan")], "size": [None, 2, 3, 0]})
    assert pareto_mask(table, {"acc": "max", "size": "min"}).tolist() == [False, True, True, False]
    everything_missing = pa.table({"acc": [None, None], "size": [1, 2]})
    assert pareto_front(everything_missing, {"acc": "max", "size": "min"}).num_rows == 0


def test_empty_tables_and_all_null_columns() -> None:
    empty = pa.table({"acc": pa.array([], pa.float64()), "who": pa.array([], pa.string())})
    front = pareto_front(empty, {"acc": "max"})
    assert front.num_rows == 0
    assert front.schema == empty.schema
    nulls = pa.table({"acc": pa.nulls(3), "size": [1, 2, 3]})
    assert pareto_front(nulls, {"acc": "max", "size": "min"}).num_rows == 0


def test_large_integers_infinities_and_signed_zeros_compare_exactly() -> None:
    big = 2**62
    table = pa.table({"a": [big, big + 1, -(2**63)], "b": [0.0, 0.0, math.inf]})
    # float64 would tie big and big + 1; max on int64's minimum must not overflow.
    assert pareto_mask(table, {"a": "min", "b": "min"}).tolist() == [True, False, True]
    assert pareto_mask(table, {"a": "max", "b": "max"}).tolist() == [False, True, True]
    zeros = pa.table({"a": [0.0, -0.0, -math.inf], "b": [1, 1, 0]})
    assert pareto_mask(zeros, {"a": "max", "b": "max"}).tolist() == [True, True, False]
    unsigned = pa.table({"a": pa.array([2**64 - 1, 2**64 - 2], pa.uint64())})
    assert pareto_mask(unsigned, {"a": "max"}).tolist() == [True, False]


def test_decimal_columns_are_numbers() -> None:
    from decimal import Decimal

    table = pa.table({"a": pa.array([Decimal("1.5"), Decimal("2.5"), None], pa.decimal128(5, 2))})
    assert pareto_mask(table, {"a": "max"}).tolist() == [False, True, False]


def test_thousands_of_rows_match_brute_force_on_a_sample() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    table = pa.table(
        {
            "map": rng.integers(40, 80, n).astype(float),
            "auc": rng.normal(70, 5, n).round(1),
            "params": rng.choice([250, 1000, 4000, 16000], n),
        }
    )
    objectives: dict[str, Direction] = {"map": "max", "auc": "max", "params": "min"}
    mask = pareto_mask(table, objectives)
    x = np.stack([-table["map"].to_numpy(), -table["auc"].to_numpy(), table["params"].to_numpy()])
    expected = [
        not bool(np.any(np.all(x <= x[:, [i]], axis=0) & np.any(x < x[:, [i]], axis=0)))
        for i in range(n)
    ]
    assert mask.tolist() == expected
    assert 0 < mask.sum() < n


@pytest.mark.parametrize(
    ("objectives", "message"),
    [
        ({}, "objectives: must map at least one column to min or max, got {}"),
        (
            {"mapp": "max"},
            "objectives: unknown column 'mapp' (columns: map, params, name)",
        ),
        ({"map": "up"}, "objectives.map: must be min or max, got 'up'"),
        ({"name": "max"}, "objectives.name: must be a numeric column, got string"),
        (
            {"map": "MAX", "size": "min"},
            "objectives.map: must be min or max, got 'MAX'; "
            "objectives: unknown column 'size' (columns: map, params, name)",
        ),
    ],
)
def test_bad_objectives_name_the_rule_and_the_value(
    objectives: dict[str, str], message: str
) -> None:
    table = pa.table({"map": [1.0], "params": [2], "name": ["a"]})
    with pytest.raises(ObjectivesError) as raised:
        pareto_front(table, objectives)  # type: ignore[arg-type]  # a bad direction, on purpose
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)


def test_parse_objectives() -> None:
    assert parse_objectives("map:max,attr_auc:max,params:min") == {
        "map": "max",
        "attr_auc": "max",
        "params": "min",
    }
    assert list(parse_objectives(" params : min , map:max ")) == ["params", "map"]
    defaults: dict[str, Direction] = {"map": "max", "params": "min"}
    assert parse_objectives("map,params:max", defaults) == {"map": "max", "params": "max"}


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("", ["objectives: must be NAME:min or NAME:max, comma-separated, got ''"]),
        (" , ", ["objectives: must be NAME:min or NAME:max, comma-separated, got ' , '"]),
        ("map", ["objectives.map: must be map:min or map:max, got 'map'"]),
        (
            "map:up,:max,map:max,,auc:min,auc:max",
            [
                "objectives.map: must be min or max, got 'up'",
                "objectives: missing name in ':max'",
                "objectives: empty item in 'map:up,:max,map:max,,auc:min,auc:max'",
                "objectives.auc: given more than once",
            ],
        ),
    ],
)
def test_parse_objectives_reports_every_problem(text: str, problems: list[str]) -> None:
    with pytest.raises(ObjectivesError) as raised:
        parse_objectives(text)
    assert raised.value.problems == problems
    assert str(raised.value) == "; ".join(problems)


def test_parse_objectives_keeps_what_it_could_read() -> None:
    with pytest.raises(ObjectivesError) as raised:
        parse_objectives("map:max,x:up,flops", {"flops": "min"})
    assert raised.value.parsed == {"map": "max", "flops": "min"}
