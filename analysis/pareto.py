"""Pareto fronts over tables of trials (one row per trial, one column per objective).

``pareto_front`` keeps the rows no other row dominates: row a dominates row b when a is no
worse than b in every objective and strictly better in at least one. Rows with a missing
(null or NaN) objective take no part; rows equal in every objective are all kept (neither
dominates the other); the kept rows stay in their original order.

The comparison works on dense ranks of each column (``numpy.unique``), so it is exact for any
integer or floating dtype (no float64 round-off of large integers, no overflow when a "max"
column is flipped). Distinct points are then judged in lexicographic order, in vectorised
blocks of bounded memory, against the front found so far: O(n * front) comparisons, at worst
O(n^2) (everything on the front; 20,000 such rows take seconds).

The table may be a ``pyarrow.Table`` (the core: :func:`analysis.runs.load_trials` gives one), a
pandas ``DataFrame`` (``mlflow.search_runs`` gives one) or any object that exports the Arrow
PyCapsule stream interface (``__arrow_c_stream__``: polars, DuckDB, a ``RecordBatchReader``).
An objective names a column; when a table has no column of that name, ``metrics.NAME`` or
``params.NAME`` stands for it (:data:`COLUMN_PREFIXES`, ``mlflow.search_runs``' names), so
the same objectives work on either source. A ``params.`` column of numbers written as
strings, which MLflow params are, is read as float64.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, cast, runtime_checkable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from trainables.metric_names import Direction

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMN_PREFIXES",
    "ArrowStreamExportable",
    "Direction",
    "ObjectivesError",
    "TableLike",
    "pareto_front",
    "pareto_mask",
    "parse_objectives",
]

#: The column prefixes ``mlflow.search_runs`` gives metrics and params, in the order they are
#: tried for an objective that names no column of the table.
COLUMN_PREFIXES: Final = ("metrics.", "params.")

#: Upper bound on the booleans one block of the pairwise comparison holds at once.
_BLOCK_ELEMENTS: Final = 1 << 22
#: Points judged per block (fewer when the front grows large).
_BLOCK_ROWS: Final = 512


@runtime_checkable
class ArrowStreamExportable(Protocol):
    """An object that exports its rows through the Arrow PyCapsule stream interface."""

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object: ...


#: What :func:`pareto_front` and :func:`pareto_mask` take.
TableLike: TypeAlias = "pa.Table | ArrowStreamExportable | pd.DataFrame"


class ObjectivesError(ValueError):
    """An objectives specification is wrong; ``problems`` lists every problem found.

    ``parsed`` holds the items ``parse_objectives`` could read, so that a caller can check
    those too and report every problem at once.
    """

    def __init__(self, problems: list[str], parsed: Mapping[str, Direction] | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.parsed: dict[str, Direction] = dict(parsed or {})


def parse_objectives(
    text: str, default_directions: Mapping[str, Direction] | None = None
) -> dict[str, Direction]:
    """Parse ``"map:max,attr_auc:max,params:min"`` into ``{"map": "max", ...}`` (in order).

    A bare name (``"map"``) takes its direction from ``default_directions`` when that knows it.
    Raises ``ObjectivesError`` (a ``ValueError``) naming every malformed item.
    """
    problems: list[str] = []
    objectives: dict[str, Direction] = {}
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ObjectivesError(
            [f"objectives: must be NAME:min or NAME:max, comma-separated, got {text!r}"]
        )
    for item in items:
        name, colon, direction = (part.strip() for part in item.partition(":"))
        if not item:
            problems.append(f"objectives: empty item in {text!r}")
            continue
        if not name:
            problems.append(f"objectives: missing name in {item!r}")
            continue
        if not colon:
            if default_directions is None or name not in default_directions:
                problems.append(
                    f"objectives.{name}: must be {name}:min or {name}:max, got {item!r}"
                )
                continue
            direction = default_directions[name]
        if direction not in ("min", "max"):
            problems.append(f"objectives.{name}: must be min or max, got {direction!r}")
        elif name in objectives:
            problems.append(f"objectives.{name}: given more than once")
        else:
            objectives[name] = cast(Direction, direction)
    if problems:
        raise ObjectivesError(problems, objectives)
    return objectives


def pareto_front(table: TableLike, objectives: Mapping[str, Direction]) -> Any:
    """The rows of ``table`` that no other row dominates, in their original order.

    ``objectives`` maps a numeric column to ``"min"`` or ``"max"`` (the better direction); a
    name the table lacks may stand for its ``metrics.NAME`` or ``params.NAME`` column (see
    the module's docstring). Rows with a null or NaN objective are left out.

    Returns the kind it was given: a ``pyarrow.Table`` for a table, a ``DataFrame`` (every
    column, the original index) for a pandas ``DataFrame``, and a ``pyarrow.Table`` for any
    other ``__arrow_c_stream__`` object (a stream can be read once; Arrow is what it holds).
    Raises ``ObjectivesError`` (a ``ValueError``) for an empty mapping, an unknown, ambiguous
    or non-numeric column or a bad direction, and ``TypeError`` for anything else as ``table``.
    """
    if _is_dataframe(table):
        frame = cast("pd.DataFrame", table)
        return frame[_frame_mask(frame, objectives)]
    arrow = _as_arrow(table)
    return arrow.filter(pa.array(_arrow_mask(arrow, objectives)))


def pareto_mask(table: TableLike, objectives: Mapping[str, Direction]) -> Any:
    """Boolean mask over the rows of ``table``: True where the row is on the Pareto front.

    A numpy array, except for a pandas ``DataFrame``: a boolean ``Series`` on its index (so
    ``frame[mask]`` and ``frame.assign(front=mask)`` line up).
    """
    if _is_dataframe(table):
        import pandas as pd

        frame = cast("pd.DataFrame", table)
        return pd.Series(_frame_mask(frame, objectives), index=frame.index, name="pareto")
    return _arrow_mask(_as_arrow(table), objectives)


def _is_dataframe(table: object) -> bool:
    # Without pandas imported nothing can be a DataFrame: this never imports it.
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(table, pandas.DataFrame)


def _as_arrow(table: object) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    if hasattr(table, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(table).read_all()
    raise TypeError(
        "table: must be a pyarrow Table, a pandas DataFrame or an object with "
        f"__arrow_c_stream__, got {type(table).__module__}.{type(table).__qualname__}"
    )


def _frame_mask(frame: pd.DataFrame, objectives: Mapping[str, Direction]) -> npt.NDArray[np.bool_]:
    """The mask of a DataFrame. Only the columns an objective names are converted to Arrow:
    ``mlflow.search_runs``' other columns (tags, times) need not convert, and the rest stand
    in as null columns so that names, duplicates and messages are the Arrow path's."""
    names = [str(name) for name in frame.columns]
    wanted = set(names) & {
        column
        for name in (objectives if isinstance(objectives, Mapping) else {})
        for column in (name, *(prefix + name for prefix in COLUMN_PREFIXES))
    }
    arrays = []
    for position, name in enumerate(names):
        if name not in wanted:
            arrays.append(pa.nulls(len(frame)))
            continue
        series = frame.iloc[:, position]
        try:
            # NaN and None are both missing to the front; from_pandas makes NaN a null.
            arrays.append(pa.array(series, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Mixed Python objects: not a numeric column, which the check below says.
            arrays.append(pa.array([str(value) for value in series]))
    return _arrow_mask(pa.Table.from_arrays(arrays, names=names), objectives)


def _arrow_mask(table: pa.Table, objectives: Mapping[str, Direction]) -> npt.NDArray[np.bool_]:
    columns = _objective_columns(table, objectives)
    valid = np.ones(table.num_rows, dtype=bool)
    for _, present, _ in columns:
        valid &= present
    rows = np.flatnonzero(valid)
    keep = np.zeros(table.num_rows, dtype=bool)
    if rows.size == 0:
        return keep
    ranks = np.empty((rows.size, len(columns)), dtype=np.int64)
    for k, (values, _, maximize) in enumerate(columns):
        unique, inverse = np.unique(values[rows], return_inverse=True)
        ranks[:, k] = (unique.size - 1 - inverse) if maximize else inverse
    keep[rows] = ~_dominated(ranks)
    return keep


def _column_of(objective: str, names: list[str]) -> str | list[str]:
    """The column that holds ``objective``: its own name if the table has it, else its one
    prefixed column (:data:`COLUMN_PREFIXES`), else the name (unknown, reported as such).
    Both prefixes present: the list of them, refused by the caller, since which of two values
    the objective means is the caller's to say."""
    if objective in names:
        return objective
    found = [prefix + objective for prefix in COLUMN_PREFIXES if prefix + objective in names]
    if len(found) > 1:
        return found
    return found[0] if found else objective


def _dominated(ranks: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """For each row of ``ranks`` (lower is better in every column): does another dominate it?"""
    k = ranks.shape[1]
    unique_rows, inverse = np.unique(ranks, axis=0, return_inverse=True)
    # Exact duplicates share one row of ``unique_rows``: they cannot dominate each other, and a
    # point dominates all of them or none, so the work runs on distinct points only. Those come
    # sorted lexicographically and a point's dominators are all lexicographically smaller; a
    # dominated point is dominated by some point of the front, too. So, in blocks in that order,
    # each point is compared with the front found so far and with the points before it in its
    # block: O(n * (front + block)) comparisons, O(n^2) only when most points are on the front.
    m = unique_rows.shape[0]
    dominated = np.zeros(m, dtype=bool)
    front = unique_rows[:0]
    start = 0
    while start < m:
        block = max(1, min(_BLOCK_ROWS, _BLOCK_ELEMENTS // (k * (len(front) + _BLOCK_ROWS))))
        stop = min(m, start + block)
        candidates = unique_rows[start:stop, None, :]  # (b, 1, k): the points judged
        rivals = np.concatenate([front, unique_rows[start:stop]])[None, :, :]  # (1, f + b, k)
        no_worse: npt.NDArray[np.bool_] = np.all(rivals <= candidates, axis=2)  # (b, f + b)
        # Distinct points: no worse everywhere means strictly better somewhere, except for the
        # point itself, which compares no worse than itself.
        local = np.arange(stop - start)
        no_worse[local, len(front) + local] = False
        dominated[start:stop] = np.any(no_worse, axis=1)
        front = np.concatenate([front, unique_rows[start:stop][~dominated[start:stop]]])
        start = stop
    return dominated[inverse.reshape(-1)]


def _objective_columns(
    table: pa.Table, objectives: Mapping[str, Direction]
) -> list[tuple[npt.NDArray[np.generic], npt.NDArray[np.bool_], bool]]:
    """(values, present, maximize) per objective; nulls and NaNs are not present."""
    problems: list[str] = []
    if not isinstance(objectives, Mapping) or not objectives:
        raise ObjectivesError(
            [f"objectives: must map at least one column to min or max, got {objectives!r}"]
        )
    columns = []
    names = table.column_names
    for objective, direction in objectives.items():
        if direction not in ("min", "max"):
            problems.append(f"objectives.{objective}: must be min or max, got {direction!r}")
        name = _column_of(objective, names)
        if isinstance(name, list):
            problems.append(
                f"objectives.{objective}: no column {objective!r} and {len(name)} prefixed ones "
                f"({', '.join(repr(n) for n in name)}); name the one meant"
            )
            continue
        if name not in names:
            problems.append(f"objectives: unknown column {name!r} (columns: {', '.join(names)})")
            continue
        if names.count(name) > 1:
            problems.append(f"objectives.{name}: the table has {names.count(name)} such columns")
            continue
        column = table.column(name)
        kind = column.type
        if name.startswith(COLUMN_PREFIXES[1]) and (
            pa.types.is_string(kind) or pa.types.is_large_string(kind)
        ):
            # MLflow params are strings; a numeric param is an objective all the same.
            try:
                column = column.cast(pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                bad = next(v for v in column.to_pylist() if v is not None and not _number(v))
                problems.append(f"objectives.{name}: must hold numbers, got {bad!r}")
                continue
            kind = column.type
        if pa.types.is_decimal(kind):
            column = column.cast(pa.float64())
        elif pa.types.is_null(kind):
            column = pa.chunked_array([pa.nulls(len(column), pa.float64())])
        elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            problems.append(f"objectives.{name}: must be a numeric column, got {kind}")
            continue
        present = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        values = np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False))
        if pa.types.is_floating(column.type):
            present &= ~np.isnan(values)
        columns.append((values, present, direction == "max"))
    if problems:
        raise ObjectivesError(problems)
    return columns


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
