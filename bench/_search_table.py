"""The tabulated search benchmark's table: its layout, and looking a configuration up in it.

``bench.make_search_table`` writes it, ``bench.search_efficiency`` replays it. One row per
(grid point, epoch): a column per searched parameter of the search space (null where the
parameter does not apply, e.g. ``beta`` of ``matching: none``), :data:`EPOCH` (1-based, Tune's
``training_iteration``), every metric the trainable reported that epoch, :data:`SECONDS` (the
epoch's ``time_train_s`` + ``time_eval_s``) and :data:`DIVERGED` (True on the one row of the
epoch whose loss became NaN or infinite: its metrics are NaN and no epoch follows). What the
table was made with (the spec overrides, the teacher's cache key, the grid) is JSON in the
Parquet schema's metadata under :data:`METADATA_KEY`.

Lookup (:class:`SearchTable`): categorical parameters must match a grid value exactly; numeric
ones (``beta``, ``drop_p``) are either taken from the nearest grid value (``nearest``, the
default: Syne Tune's 1-nearest-neighbour surrogate; distances on a log scale for
``loguniform`` and log ``int`` parameters, else linear; a tie goes to the lower value) or
interpolated between the two neighbouring grid values of each (``linear``: multilinear, on
the same scales). Outside the grid's range both clamp to its end. ``nearest`` only ever
returns results that were measured, so no configuration can beat the table's own front;
``linear`` can land a little beyond it, between two front points.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from search_spaces import Parameter, SearchSpace

__all__ = [
    "DIVERGED",
    "EPOCH",
    "LOOKUPS",
    "METADATA_KEY",
    "SECONDS",
    "TABLE_PATH",
    "Curve",
    "SearchTable",
    "grid_points",
    "read_table",
    "read_table_metadata",
]

#: Where the table lives in the repository.
TABLE_PATH: Final = Path(__file__).parent / "tables" / "search_table.parquet"
EPOCH: Final = "epoch"
SECONDS: Final = "seconds"
DIVERGED: Final = "diverged"
#: The table's own settings, in its Parquet schema metadata (not an MLflow tag).
METADATA_KEY: Final = b"bench.search_table"

Lookup = Literal["nearest", "linear"]
LOOKUPS: Final[tuple[Lookup, ...]] = ("nearest", "linear")

Scalar = bool | int | float | str | None


def grid_points(
    space: SearchSpace, values: Mapping[str, Sequence[Scalar]]
) -> list[dict[str, Scalar]]:
    """Every configuration of the grid, each parameter only where the space's ``when``
    conditions make it apply (the configurations Optuna's define-by-run would produce)."""
    points: list[dict[str, Scalar]] = [{}]
    for parameter in space.parameters:
        points = [
            extended
            for point in points
            for extended in (
                [{**point, parameter.name: v} for v in values[parameter.name]]
                if parameter.is_active(point)
                else [point]
            )
        ]
    return points


def read_table(path: Path) -> pa.Table:
    return pq.read_table(path)


def read_table_metadata(table: pa.Table) -> dict[str, Any]:
    """What the table was made with (empty for a table without it)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return {} if raw is None else dict(json.loads(raw))


@dataclass(frozen=True, kw_only=True)
class Curve:
    """One configuration's results: ``rows[e - 1]`` holds epoch ``e``'s metrics (and
    :data:`SECONDS`); ``diverged``: the last row is the epoch whose loss diverged."""

    rows: tuple[dict[str, float], ...]
    diverged: bool


def _is_log(parameter: Parameter) -> bool:
    return parameter.type == "loguniform" or (parameter.type == "int" and parameter.log)


def _scale(parameter: Parameter, value: float) -> float:
    return math.log(value) if _is_log(parameter) else value


class SearchTable:
    """The table's grid points by configuration, for :meth:`lookup`.

    Args:
        table: the rows (see the module's docstring).
        space: the search space the configurations come from; its parameters are columns.

    Raises:
        ValueError: the table lacks a parameter's column or :data:`EPOCH`.
    """

    def __init__(self, table: pa.Table, *, space: SearchSpace) -> None:
        missing = [n for n in (*space.names, EPOCH) if n not in table.column_names]
        if missing:
            raise ValueError(
                f"table: no column {', '.join(missing)} (columns: {table.column_names})"
            )
        self._space = space
        self._numeric = {p.name: p for p in space.parameters if p.type != "categorical"}
        skip = {*space.names, EPOCH, DIVERGED}
        self.metrics = tuple(
            name
            for name in table.column_names
            if name not in skip
            and (
                pa.types.is_floating(table.schema.field(name).type)
                or pa.types.is_integer(table.schema.field(name).type)
            )
        )
        points: dict[tuple[tuple[str, Scalar], ...], list[tuple[int, dict[str, float], bool]]] = {}
        for row in table.to_pylist():
            key = self._key({n: row[n] for n in space.names if row[n] is not None})
            values = {m: math.nan if row[m] is None else float(row[m]) for m in self.metrics}
            points.setdefault(key, []).append((int(row[EPOCH]), values, bool(row.get(DIVERGED))))
        self._curves: dict[tuple[tuple[str, Scalar], ...], Curve] = {}
        for key, rows in points.items():
            rows.sort(key=lambda r: r[0])
            self._curves[key] = Curve(rows=tuple(r[1] for r in rows), diverged=rows[-1][2])

    @staticmethod
    def _key(config: Mapping[str, Any]) -> tuple[tuple[str, Scalar], ...]:
        # Floats as the table stores them; ints of a categorical stay ints (2 != "2").
        return tuple(
            sorted((k, float(v) if isinstance(v, float) else v) for k, v in config.items())
        )

    @property
    def points(self) -> dict[tuple[tuple[str, Scalar], ...], Curve]:
        """Every grid point (its configuration as sorted items) and its curve."""
        return dict(self._curves)

    def _grid_values(self, fixed: Mapping[str, Any], name: str) -> list[float]:
        """The grid values of numeric ``name`` among the points that agree with ``fixed``."""
        values = set()
        for key in self._curves:
            point = dict(key)
            if name in point and all(point.get(k) == v for k, v in fixed.items()):
                values.add(float(point[name]))  # type: ignore[arg-type]
        return sorted(values)

    def _neighbours(
        self, parameter: Parameter, grid: list[float], value: float
    ) -> list[tuple[float, float]]:
        """``(grid value, weight)`` of the one or two grid values ``value`` is taken from."""
        if value <= grid[0]:
            return [(grid[0], 1.0)]
        if value >= grid[-1]:
            return [(grid[-1], 1.0)]
        upper = next(i for i, g in enumerate(grid) if g >= value)
        low, high = grid[upper - 1], grid[upper]
        if high == value:
            return [(high, 1.0)]
        t = (_scale(parameter, value) - _scale(parameter, low)) / (
            _scale(parameter, high) - _scale(parameter, low)
        )
        return [(low, 1.0 - t), (high, t)]

    def lookup(self, config: Mapping[str, Any], *, mode: Lookup = "nearest") -> Curve:
        """The curve of ``config`` (see the module's docstring for the rule).

        Raises:
            KeyError: no grid point has ``config``'s categorical values.
        """
        categorical = {k: v for k, v in config.items() if k not in self._numeric}
        numeric = {k: float(v) for k, v in config.items() if k in self._numeric}
        choices: list[list[tuple[float, float]]] = []
        for name, value in numeric.items():
            grid = self._grid_values(categorical, name)
            if not grid:
                raise KeyError(f"no grid point with {categorical} has {name}")
            neighbours = self._neighbours(self._numeric[name], grid, value)
            if mode == "nearest":
                # The larger weight is the nearer on the parameter's scale; a tie, the lower.
                neighbours = [(max(neighbours, key=lambda n: (n[1], -n[0]))[0], 1.0)]
            choices.append(neighbours)
        corners: list[tuple[Curve, float]] = []
        for combination in itertools.product(*choices):
            point = {
                **categorical,
                **{n: g for n, (g, _) in zip(numeric, combination, strict=True)},
            }
            key = self._key(point)
            if key not in self._curves:
                raise KeyError(f"the table has no grid point {dict(key)}")
            corners.append((self._curves[key], math.prod(w for _, w in combination)))
        corners = [(c, w) for c, w in corners if w > 0]
        if len(corners) == 1:
            return corners[0][0]
        return _interpolate(corners)


def _interpolate(corners: Sequence[tuple[Curve, float]]) -> Curve:
    """Weighted mean per epoch of the corners' curves: the nearest corner (largest weight)
    decides whether and when the point diverges; at each epoch the corners that have a
    regular row there take part, their weights renormalised; a metric NaN at any of them
    is NaN (an attribution metric without pairs is undefined, not an average)."""
    nearest = max(corners, key=lambda c: c[1])[0]
    rows = []
    for epoch, own in enumerate(nearest.rows):
        last = epoch == len(nearest.rows) - 1
        if nearest.diverged and last:
            rows.append(own)
            continue
        taking = [
            (c, w)
            for c, w in corners
            if epoch < len(c.rows) and not (c.diverged and epoch == len(c.rows) - 1)
        ]
        total = sum(w for _, w in taking)
        rows.append(
            {
                metric: sum(w * c.rows[epoch].get(metric, math.nan) for c, w in taking) / total
                for metric in own
            }
        )
    return Curve(rows=tuple(rows), diverged=nearest.diverged)
