"""The Pareto front of a study's trials, ranked and written as text, CSV, JSON or Parquet."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import Final, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.pareto import Direction, pareto_front
from analysis.runs import KIND, NAME, metric_columns, param_columns

__all__ = ["FORMATS", "Format", "ranked_front", "render"]

Format = Literal["table", "csv", "json", "parquet"]
FORMATS: Final[tuple[Format, ...]] = ("table", "csv", "json", "parquet")

_FIRST: Final = ("trial", "study", "run_id", "status")


def ranked_front(trials: pa.Table, objectives: Mapping[str, Direction]) -> pa.Table:
    """The Pareto front of ``trials`` (a ``load_trials`` table), best first.

    Rows are sorted by the objectives in the order given, each best first, then by trial.
    Columns: ``trial``, ``run_id``, ``status`` (those present), the objectives, the params,
    the other metrics. On a table without rows, an objective column that is absent is added
    (float64, empty), so an empty study gives an empty front with the usual columns.
    """
    if trials.num_rows == 0:
        for name in objectives:
            if name not in trials.column_names:
                meta = {KIND: b"metric", NAME: name.encode()}
                field = pa.field(name, pa.float64(), metadata=meta)
                trials = trials.append_column(field, pa.array([], pa.float64()))
    front = pareto_front(trials, objectives)
    order = [(name, "descending" if d == "max" else "ascending") for name, d in objectives.items()]
    if "trial" in front.column_names and "trial" not in objectives:
        order.append(("trial", "ascending"))
    front = front.sort_by(order)
    first = [name for name in _FIRST if name in front.column_names and name not in objectives]
    lead = [*first, *objectives]
    params = [name for name in param_columns(front) if name not in lead]
    rest = [name for name in front.column_names if name not in lead and name not in params]
    return front.select([*lead, *params, *rest])


def render(front: pa.Table, fmt: Format, objectives: Mapping[str, Direction]) -> bytes:
    """``front`` as bytes in ``fmt``.

    ``table``: aligned text columns trial, the objectives, then the params; ``csv``: every
    column, a header row, empty cells for nulls and NaNs; ``json``: a list of one object per
    row, nulls and non-finite numbers as ``null``; ``parquet``: the Arrow table as is.
    """
    if fmt == "parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(front, sink)
        return bytes(sink.getvalue().to_pybytes())
    if fmt == "table":
        return _text(front, objectives).encode()
    rows = front.to_pylist()
    if fmt == "json":
        records = [{k: _json_value(v) for k, v in row.items()} for row in rows]
        return (json.dumps(records, indent=2, allow_nan=False) + "\n").encode()
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(front.column_names)
        writer.writerows([_csv_value(v) for v in row.values()] for row in rows)
        return buffer.getvalue().encode()
    raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _json_value(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _csv_value(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _text(front: pa.Table, objectives: Mapping[str, Direction]) -> str:
    names = [name for name in ("trial", "study", *objectives) if name in front.column_names]
    names += [name for name in param_columns(front) if name not in names]
    numeric = set(metric_columns(front)) | {
        f.name for f in front.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
    }
    headers = list(names)
    cells = [[_text_value(v) for v in front.column(name).to_pylist()] for name in names]
    widths = [max([len(h), *map(len, c)]) for h, c in zip(headers, cells, strict=True)]

    def line(values: list[str]) -> str:
        return "  ".join(
            value.rjust(width) if name in numeric else value.ljust(width)
            for name, value, width in zip(names, values, widths, strict=True)
        ).rstrip()

    lines = [line(headers)]
    lines += [line([column[i] for column in cells]) for i in range(front.num_rows)]
    return "\n".join(lines) + "\n"


def _text_value(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if 1e-3 <= abs(value) < 1e15:
            return f"{value:.4f}".rstrip("0").rstrip(".")
        return f"{value:.4g}"
    return str(value)
