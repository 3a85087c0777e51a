"""``apc report``: a study's paper-style table and plots, from MLflow (docs/design.md#apc-report).

What one report holds, for the newest study run of a study (its parent run) and the trial runs
nested under it:

- ``report.md`` / ``report.csv``: the paper's table. Per method of the study, a teacher row and
  one row per matching kind (naive = matching ``none``, EWA, SWA, SSWA). A kind's row is the
  trial of the study's enqueued setting of that kind (the paper's settings, found through
  ``analysis.effect.effect_table``) when that trial FINISHED, else the FINISHED trial of that
  kind with the best ``map`` (ties: the one that started first). Columns: ``REPORT_METRICS``
  (last epoch). The Markdown rounds (``%`` metrics to 0.1, map distances and similarities to
  0.001, params to a unit); the CSV holds the values as MLflow stores them.
- ``pareto_matrix.png``: every pair of the study's objectives (its spec's, as
  ``analysis.record.StudyRecord.objectives`` reads them; ``DEFAULT_OBJECTIVES`` when it names
  none) over the FINISHED trials, the Pareto
  front (``analysis.pareto.pareto_front``) highlighted; histograms on the diagonal.
- ``hypervolume.png``: the hypervolume of the FINISHED trials over the trials in start order
  (``analysis.hypervolume.hypervolume_history``; trials that did not finish count as started
  but add nothing), against ``default_reference`` over all FINISHED trials, so the curve uses
  one reference throughout.
- ``metrics_vs_beta.png``: ``map`` and ``attr_auc`` of the FINISHED trials against ``beta``
  (log axis), one series per matching kind; the table's naive row and the teacher as lines.
- further attribution methods (``evaluation.attribution_methods`` of the spec): one table per
  method in ``report.md`` (the paper's Table 8), their metrics as extra ``report.csv`` columns.
- ``pies.csv`` and a PIE section: per trial row, its PIEs (``analysis.pies``) and accuracy and
  attribution on PIEs against the other samples, from the trial's per-sample Parquet.
- ``attribution_overlays.png``: the teacher's and every trial row's Grad-CAM on the same
  evaluation images (the trials' ``attributions/attribution_maps.npz``).

The last two are written only when the trials logged those artifacts.

Plots use matplotlib's object API on the Agg canvas (never pyplot, never a display), imported
when a plot is drawn; MLflow is imported when the report is built. Importing this module stays
cheap.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from analysis.effect import effect_rows
from analysis.hypervolume import default_reference, hypervolume_history
from analysis.layout import (
    DEFAULT_OBJECTIVES,
    MAPS_ARTIFACT,
    REPORT_DIR,
    SETTING_PARAMS,
    Direction,
    parent_filter,
)
from analysis.pareto import pareto_front
from analysis.pies import PieSummary, load_per_sample, pie_summary
from analysis.record import StudyRecord, load_study_record, objectives_of_params
from analysis.runs import KIND, NAME, RunsQueryError, load_trials, tracking_client
from trainables.metric_names import (
    ATTRIBUTION_METHOD_LABELS,
    ATTRIBUTION_METHOD_NAMES,
    ATTRIBUTION_METRICS,
    METRICS,
    method_metric,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

__all__ = [
    "ARTIFACT_DIR",
    "DEFAULT_OBJECTIVES",
    "MATCHING_KINDS",
    "REPORT_FILES",
    "REPORT_METRICS",
    "NoFinishedTrialsError",
    "Report",
    "ReportRow",
    "caption",
    "format_metric",
    "log_report",
    "parent_filter",
    "plot_hypervolume",
    "plot_metrics_vs_beta",
    "plot_pareto_matrix",
    "render_csv",
    "render_markdown",
    "report_rows",
    "study_objectives",
    "write_report",
]

#: The table's metric columns (docs/design.md#metric-names), in order.
REPORT_METRICS: Final[tuple[str, ...]] = (
    "map", "f1", "attr_auc", "point_acc", "attr_cos", "attr_l2", "params",
)  # fmt: skip
#: Matching kind (the ``matching`` param) -> its row's name, in the table's order.
MATCHING_KINDS: Final[dict[str, str]] = {
    "none": "naive",
    "ewa": "EWA",
    "swa": "SWA",
    "sswa": "SSWA",
}
#: Where the report goes in the parent run's artifacts (``analysis.layout.REPORT_DIR``).
ARTIFACT_DIR: Final = REPORT_DIR
#: The files of a report, in the order they are written.
REPORT_FILES: Final[tuple[str, ...]] = (
    "report.md", "report.csv", "pareto_matrix.png", "hypervolume.png", "metrics_vs_beta.png",
    "pies.csv", "attribution_overlays.png",
)  # fmt: skip
#: Files written only when the table's trials logged what they need (per-sample results,
#: overlay maps: ``trainables.trial_artifacts``).
OPTIONAL_FILES: Final = frozenset({"pies.csv", "attribution_overlays.png"})
#: PIE statistics shown in the Markdown (all of them go to pies.csv).
_PIE_SHOWN: Final = ("accuracy", "teacher_accuracy", "attr_auc", "attr_cos")
_CSV_COLUMNS: Final = ("method", "row", "chosen", "setting", "trial", "run_id", *REPORT_METRICS)
_MD_COLUMNS: Final = ("method", "row", "setting", "chosen", "trial", *REPORT_METRICS)
_PERCENT: Final = frozenset({"map", "f1", "attr_auc", "point_acc"})
_FINISHED: Final = "FINISHED"
_KIND_COLORS: Final = {"none": "0.45", "ewa": "tab:blue", "swa": "tab:orange", "sswa": "tab:green"}
_METHOD_MARKERS: Final = ("o", "s", "^", "D", "v", "P")
_FRONT_COLOR: Final = "tab:red"


class NoFinishedTrialsError(RunsQueryError):
    """The study run has no FINISHED trial run to report on."""


@dataclass(frozen=True)
class ReportRow:
    """One row of the table.

    ``row`` is ``teacher`` or a matching kind's name (``MATCHING_KINDS``); ``chosen`` says why
    this run ("teacher run", "enqueued", "best map of N FINISHED", or why there is none);
    ``setting`` its distinguishing params; ``trial`` and ``run_id`` are None when no run fits.
    """

    method: str
    row: str
    chosen: str
    setting: str
    trial: str | None
    run_id: str | None
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote into ``folder`` and what it found."""

    study: str
    parent_run_id: str
    folder: Path
    files: tuple[Path, ...]
    rows: tuple[ReportRow, ...]
    objectives: Mapping[str, Direction]
    trials: int
    finished: int
    #: Rows of ``pareto_front`` over the FINISHED trials: the points highlighted.
    front: int
    #: ``(k, hypervolume of the first k trials)``; empty when no trial has every objective.
    hypervolume: tuple[tuple[int, float], ...]
    reference: Mapping[str, float] | None
    #: The table as printed: caption, then the Markdown table.
    table: str


def study_objectives(parent_params: Mapping[str, str]) -> dict[str, Direction]:
    """The study's objectives from its parent run's ``objectives.<metric>`` params, in the
    order MLflow gives them; ``DEFAULT_OBJECTIVES`` when there are none (what a report uses
    when the study run holds no effective spec, ``StudyRecord.objectives``)."""
    return objectives_of_params(parent_params)


# The table.


def report_rows(
    tracking_uri: str, study: str, *, parent_run_id: str, trials: pa.Table
) -> list[ReportRow]:
    """The table's rows: per method (first-seen order), the teacher then each matching kind.

    ``trials`` is ``load_trials(tracking_uri, study, filter_string=parent_filter(...))``.
    The enqueued settings come from the study's spec through ``effect_rows``; a kind's first
    enqueued setting whose trial FINISHED is its row, else the kind's FINISHED trial with the
    best ``map``.
    """
    record = load_study_record(study, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
    return _rows(record, trials)


def _rows(record: StudyRecord, trials: pa.Table) -> list[ReportRow]:
    effect = effect_rows(record)
    enqueued = record.enqueued
    teacher_id = effect[0].run_id
    teacher_metrics: dict[str, float] = {}
    teacher_setting = ""
    teacher = record.teacher
    if teacher is not None:
        teacher_metrics = {
            name: float(teacher.data.metrics[name])
            for name in METRICS
            if name in teacher.data.metrics
        }
        params = teacher.data.params
        teacher_setting = ", ".join(
            f"{key}={params[key]}" for key in ("arch", "width") if key in params
        )

    records = trials.to_pylist()
    index = {str(r["run_id"]): i for i, r in enumerate(records)}
    methods = _methods(records, record.method)
    rows: list[ReportRow] = []
    for method in methods:
        rows.append(
            ReportRow(
                method, "teacher", "teacher run" if teacher_id else "no teacher run",
                teacher_setting, "teacher" if teacher_id else None, teacher_id, teacher_metrics,
            )
        )  # fmt: skip
        mine = [r for r in records if _method_of(r, methods[0]) == method]
        for kind, name in MATCHING_KINDS.items():
            rows.append(_kind_row(method, kind, name, mine, enqueued, effect[1:], index, records))
    return rows


def _methods(records: Sequence[Mapping[str, Any]], fallback: str) -> list[str]:
    methods: list[str] = []
    for record in records:
        method = record.get("method")
        if isinstance(method, str) and method not in methods:
            methods.append(method)
    return methods or [fallback]


def _method_of(record: Mapping[str, Any], fallback: str) -> str:
    method = record.get("method")
    return method if isinstance(method, str) else fallback


def _kind_of(record: Mapping[str, Any]) -> str:
    kind = record.get("matching")
    return kind if isinstance(kind, str) else "none"  # the trainables' default


def _kind_row(
    method: str,
    kind: str,
    name: str,
    mine: Sequence[Mapping[str, Any]],
    enqueued: Sequence[Mapping[str, Any]],
    effect: Sequence[Any],
    index: Mapping[str, int],
    records: Sequence[Mapping[str, Any]],
) -> ReportRow:
    note = ""
    for point, effect_row in zip(enqueued, effect, strict=False):
        if str(point.get("matching", "none")) != kind:
            continue
        record = records[index[effect_row.run_id]] if effect_row.run_id in index else None
        if record is None or _method_of(record, method) != method:
            note = note or "enqueued setting never ran"
            continue
        if record["status"] == _FINISHED:
            return _trial_row(method, name, "enqueued", record)
        note = note or f"enqueued trial {record['status']}"
    candidates = [
        r
        for r in mine
        if _kind_of(r) == kind and r["status"] == _FINISHED and _finite(r.get("map"))
    ]
    if not candidates:
        chosen = f"no FINISHED {name} trial with a map" + (f" ({note})" if note else "")
        return ReportRow(method, name, chosen, "", None, None, {})
    best = max(candidates, key=lambda r: float(r["map"]))  # max keeps the first of equals
    chosen = f"best map of {len(candidates)} FINISHED" + (f" ({note})" if note else "")
    return _trial_row(method, name, chosen, best)


def _trial_row(method: str, name: str, chosen: str, record: Mapping[str, Any]) -> ReportRow:
    setting = ", ".join(
        f"{key}={_param_text(record[key])}"
        for key in SETTING_PARAMS
        if record.get(key) is not None and not _nan(record[key])
    )
    metrics = {m: float(record[m]) for m in METRICS if isinstance(record.get(m), float)}
    return ReportRow(
        method, name, chosen, setting, str(record["trial"]), str(record["run_id"]), metrics
    )


def _param_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def format_metric(name: str, value: float | None) -> str:
    """A metric as the Markdown table shows it: ``-`` when missing or NaN."""
    if value is None or math.isnan(value):
        return "-"
    if name == "params":
        return f"{value:,.0f}"
    if name in _PERCENT:
        return f"{value:.1f}"
    return f"{value:.3f}"


def caption(study: str, parent_run_id: str) -> str:
    """The table's caption: which run each row is and what the columns measure."""
    return (
        f"**Table.** Study `{study}` (study run `{parent_run_id}`), last-epoch metrics. Per "
        "method, the teacher and one row per matching kind (naive = no matching): the trial of "
        "the study's enqueued setting of that kind when it FINISHED, otherwise the FINISHED "
        "trial of that kind with the best `map` (ties: the earliest). `map`, `f1`, `attr_auc`, "
        "`point_acc` in %; `attr_auc` and `point_acc` score Grad-CAM maps against the "
        "ground-truth masks over the (image, class) pairs the model predicts correctly; "
        "`attr_cos` and `attr_l2` compare them with the teacher's maps; `params` counts "
        "parameters."
    )


def render_markdown(rows: Sequence[ReportRow]) -> str:
    """``rows`` as a Markdown table (numbers rounded by ``format_metric``)."""
    lines = ["| " + " | ".join(_MD_COLUMNS) + " |", "|" + "---|" * len(_MD_COLUMNS)]
    for r in rows:
        cells = [r.method, r.row, r.setting or "-", r.chosen, r.trial or "-"]
        cells += [format_metric(m, r.metrics.get(m)) for m in REPORT_METRICS]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def further_methods(rows: Sequence[ReportRow]) -> list[str]:
    """The further attribution methods (not Grad-CAM) some row has a metric of."""
    return [
        method
        for method in ATTRIBUTION_METHOD_NAMES[1:]
        if any(method_metric(m, method) in r.metrics for r in rows for m in ATTRIBUTION_METRICS)
    ]


def extra_columns(rows: Sequence[ReportRow]) -> list[str]:
    """The CSV's columns after ``REPORT_METRICS``: ``pie_fraction`` and the further methods'
    metrics, those that some row has."""
    names = ["pie_fraction"] + [
        method_metric(metric, method)
        for method in further_methods(rows)
        for metric in ATTRIBUTION_METRICS
    ]
    return [name for name in names if any(name in r.metrics for r in rows)]


def render_csv(rows: Sequence[ReportRow]) -> str:
    """``rows`` as CSV with a header; numbers unrounded (``repr``), empty cells for none.

    Columns: ``_CSV_COLUMNS`` then :func:`extra_columns`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    extra = extra_columns(rows)
    writer.writerow([*_CSV_COLUMNS, *extra])
    for r in rows:
        metrics = [
            "" if (v := r.metrics.get(m)) is None or math.isnan(v) else repr(v)
            for m in (*REPORT_METRICS, *extra)
        ]
        writer.writerow(
            [r.method, r.row, r.chosen, r.setting, r.trial or "", r.run_id or "", *metrics]
        )
    return buffer.getvalue()


def render_method_tables(rows: Sequence[ReportRow]) -> str:
    """One Markdown table per further attribution method (the paper's Table 8): the rows'
    ``attr_auc_<method>``... under the plain metric names; empty without further methods."""
    parts = []
    for method in further_methods(rows):
        header = ("method", "row", "trial", *ATTRIBUTION_METRICS)
        lines = [f"### {ATTRIBUTION_METHOD_LABELS[method]}", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
        for r in rows:
            cells = [r.method, r.row, r.trial or "-"] + [
                format_metric(m, r.metrics.get(method_metric(m, method)))
                for m in ATTRIBUTION_METRICS
            ]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


# PIEs and overlays: from the trials' artifacts.


def pie_rows(
    tracking_uri: str, rows: Sequence[ReportRow], *, client: MlflowClient | None = None
) -> list[tuple[ReportRow, PieSummary]]:
    """The PIE summary of each trial row whose run logged per-sample results (``client``: one
    open on ``tracking_uri``, e.g. a ``StudyRecord``'s)."""
    if client is None:
        client = tracking_client(tracking_uri)
    found = []
    for r in rows:
        if r.row == "teacher" or r.run_id is None:
            continue
        table = load_per_sample(tracking_uri, r.run_id, client=client)
        if table is not None:
            found.append((r, pie_summary(table)))
    return found


def _pie_cell(name: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    return (
        f"{value:.1f}" if name in ("accuracy", "teacher_accuracy", "attr_auc") else f"{value:.3f}"
    )


def render_pies_markdown(pies: Sequence[tuple[ReportRow, PieSummary]]) -> str:
    """PIEs per trial row, and accuracy and attribution on PIEs against the other samples."""
    header = ["method", "row", "trial", "samples", "PIEs", "pie %"]
    header += [f"{name} PIE / rest" for name in _PIE_SHOWN]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r, summary in pies:
        cells = [r.method, r.row, r.trial or "-", str(summary.samples), str(summary.pies),
                 f"{100 * summary.pie_fraction:.1f}"]  # fmt: skip
        for name in _PIE_SHOWN:
            pie, rest = summary.pie.get(name, math.nan), summary.rest.get(name, math.nan)
            cells.append(f"{_pie_cell(name, pie)} / {_pie_cell(name, rest)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_pies_csv(pies: Sequence[tuple[ReportRow, PieSummary]]) -> str:
    """Every PIE statistic of every trial row, unrounded: ``pie_<stat>`` and ``rest_<stat>``."""
    stats: list[str] = []
    for _, summary in pies:
        stats += [name for name in summary.pie if name not in stats]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    sides = ("pie", "rest")
    writer.writerow([
        "method", "row", "trial", "run_id", "samples", "pies", "pie_fraction",
        *(f"{side}_{name}" for name in stats for side in sides),
    ])  # fmt: skip
    for r, summary in pies:
        groups = {"pie": summary.pie, "rest": summary.rest}
        values = [groups[side].get(n, math.nan) for n in stats for side in sides]
        writer.writerow([r.method, r.row, r.trial or "", r.run_id or "", summary.samples,
                         summary.pies, repr(summary.pie_fraction),
                         *("" if math.isnan(v) else repr(v) for v in values)])  # fmt: skip
    return buffer.getvalue()


def plot_overlays(
    tracking_uri: str,
    rows: Sequence[ReportRow],
    path: Path,
    *,
    title: str,
    client: MlflowClient | None = None,
) -> list[str]:
    """Teacher-vs-student overlays of the trial rows side by side, on the same images.

    Uses each row's ``attributions/attribution_maps.npz``; a row whose maps show other images
    or classes than the first row's (another teacher or split) is left out. Returns the
    columns drawn after the teacher's (none: nothing is written).
    """
    import tempfile

    from trainables.overlays import OverlayMaps, draw_overlays, load_overlay_maps

    if client is None:
        client = tracking_client(tracking_uri)
    several = len({r.method for r in rows}) > 1
    base: OverlayMaps | None = None
    columns: list[tuple[str, npt.NDArray[np.float32]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for r in rows:
            if r.row == "teacher" or r.run_id is None:
                continue
            folder = MAPS_ARTIFACT.rpartition("/")[0]
            if MAPS_ARTIFACT not in [a.path for a in client.list_artifacts(r.run_id, folder)]:
                continue
            maps = load_overlay_maps(client.download_artifacts(r.run_id, MAPS_ARTIFACT, scratch))
            if base is None:
                base = maps
                columns.append(("teacher", maps.teacher))
            elif not (
                np.array_equal(maps.indices, base.indices)
                and np.array_equal(maps.targets, base.targets)
            ):
                continue
            columns.append((f"{r.method} {r.row}" if several else r.row, maps.student))
    if base is None:
        return []
    draw_overlays(base, columns, path, title=title)
    return [label for label, _ in columns[1:]]


# The plots.


def _floats(table: pa.Table, name: str) -> npt.NDArray[np.float64]:
    """A column as float64, NaN for nulls, non-numbers and an absent column."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    out = np.full(table.num_rows, np.nan)
    for i, value in enumerate(table.column(name).to_pylist()):
        if isinstance(value, int | float):
            out[i] = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                out[i] = float(value)
    return out


def _with_objectives(table: pa.Table, objectives: Mapping[str, Direction]) -> pa.Table:
    """``table`` with an all-null float64 column for each objective it lacks."""
    for name in objectives:
        if name not in table.column_names:
            meta = {KIND: b"metric", NAME: name.encode()}
            column = pa.nulls(table.num_rows, pa.float64())
            table = table.append_column(pa.field(name, pa.float64(), metadata=meta), column)
    return table


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure: Figure, path: Path) -> None:
    # Figure.savefig picks the Agg canvas for PNG; no pyplot, no display.
    figure.savefig(path, format="png")


def _objective_label(name: str, direction: Direction) -> str:
    return f"{name} ({'higher' if direction == 'max' else 'lower'} is better)"


def _log_scale(values: npt.NDArray[np.float64]) -> bool:
    """Log axis for positive values spanning two decades or more (sizes, FLOPs)."""
    finite = values[np.isfinite(values)]
    return bool(finite.size and finite.min() > 0 and finite.max() / finite.min() >= 100)


def _compact_ticks(axes: Axes, values: npt.NDArray[np.float64], which: str) -> None:
    """Engineering tick labels (``150k``, ``2M``) for a linear axis of large values."""
    from matplotlib.ticker import EngFormatter

    finite = np.abs(values[np.isfinite(values)])
    axis = axes.xaxis if which == "x" else axes.yaxis
    if finite.size and finite.max() >= 1e4 and axis.get_scale() == "linear":
        axis.set_major_formatter(EngFormatter(sep=""))


def _empty(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=9)


def plot_pareto_matrix(
    finished: pa.Table, objectives: Mapping[str, Direction], path: Path, *, title: str = ""
) -> int:
    """Scatter matrix of ``objectives`` over ``finished`` (one row per trial), the Pareto
    front highlighted; histograms on the diagonal. Writes a PNG to ``path``.

    Returns the number of trials highlighted: the rows of ``pareto_front(finished,
    objectives)`` (rows with a missing objective are never on it).
    """
    table = _with_objectives(finished, objectives)
    front = pareto_front(table, objectives)
    front_ids = set(front.column("run_id").to_pylist())
    on_front = np.array([rid in front_ids for rid in table.column("run_id").to_pylist()], bool)
    names = list(objectives)
    values = {name: _floats(table, name) for name in names}
    logs = {name: _log_scale(values[name]) for name in names}
    k = len(names)
    from matplotlib.ticker import MaxNLocator

    figure = _figure(2.7 * k + 0.6, 2.7 * k + 0.8)
    grid = figure.subplots(k, k, squeeze=False)
    for i, y_name in enumerate(names):
        for j, x_name in enumerate(names):
            axes: Axes = grid[i][j]
            x = values[x_name]
            if logs[x_name]:
                axes.set_xscale("log")
            if i == j:
                finite = np.isfinite(x)
                if not finite.any():
                    _empty(axes, f"no {x_name} values")
                else:
                    low, high = float(x[finite].min()), float(x[finite].max())
                    # One set of edges for both, so the front's bars sit inside the others.
                    edges = (
                        np.geomspace(low, high, 13)
                        if logs[x_name] and high > low
                        else np.histogram_bin_edges(x[finite], bins=12)
                    ).tolist()
                    axes.hist(x[finite], bins=edges, color="0.75", label="all FINISHED")
                    axes.hist(
                        x[finite & on_front], bins=edges, color=_FRONT_COLOR, alpha=0.8,
                        label="Pareto front",
                    )  # fmt: skip
                    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
                axes.set_ylabel("trials" if j == 0 else "")
            else:
                y = values[y_name]
                if logs[y_name]:
                    axes.set_yscale("log")
                rest = ~on_front
                axes.scatter(x[rest], y[rest], s=22, color="0.6", label="dominated")
                axes.scatter(
                    x[on_front], y[on_front], s=46, color=_FRONT_COLOR, edgecolors="black",
                    linewidths=0.6, label="Pareto front", zorder=3,
                )  # fmt: skip
                if j == 0:
                    axes.set_ylabel(_objective_label(y_name, objectives[y_name]), fontsize=8)
            if i == k - 1:
                axes.set_xlabel(_objective_label(x_name, objectives[x_name]), fontsize=8)
            _compact_ticks(axes, x, "x")
            if i != j:
                _compact_ticks(axes, values[y_name], "y")
            axes.tick_params(labelsize=7)
            axes.grid(True, alpha=0.3)
    count = int(front.num_rows)
    spec = ", ".join(f"{n}:{d}" for n, d in objectives.items())
    head = f"{title}: " if title else ""
    figure.suptitle(
        f"{head}{count} of {table.num_rows} FINISHED trials on the Pareto front of {spec}",
        fontsize=10,
    )
    handles, labels = grid[0][-1].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    _save(figure, path)
    return count


def plot_hypervolume(
    trials: pa.Table, objectives: Mapping[str, Direction], path: Path, *, title: str = ""
) -> tuple[list[tuple[int, float]], dict[str, float] | None]:
    """Hypervolume over the trials in start order (the rows of ``trials``, a ``load_trials``
    table), counting FINISHED trials only, against ``default_reference`` over all FINISHED
    trials. Writes a PNG to ``path``; returns the history and the reference (None, and an
    empty history, when no FINISHED trial has every objective)."""
    table = _with_objectives(trials, objectives)
    finished = np.array([s == _FINISHED for s in table.column("status").to_pylist()], bool)
    columns = {}
    for name in objectives:
        column = _floats(table, name)
        column[~finished] = np.nan  # started, never measured: adds nothing
        columns[name] = column
    points = pa.table(columns) if columns else pa.table({})
    figure = _figure(7.0, 4.2)
    axes: Axes = figure.subplots()
    history: list[tuple[int, float]] = []
    reference: dict[str, float] | None
    try:
        reference = default_reference(points, objectives)
    except ValueError:
        reference = None
        _empty(axes, "no FINISHED trial has a finite value of every objective")
    if reference is not None:
        history = hypervolume_history(points, objectives, reference=reference)
        ks = [k for k, _ in history]
        volumes = [v for _, v in history]
        axes.step(ks, volumes, where="post", color="tab:blue", label="hypervolume")
        better = [i for i, v in enumerate(volumes) if v > (volumes[i - 1] if i else 0.0)]
        axes.scatter(
            [ks[i] for i in better], [volumes[i] for i in better], color="tab:blue", s=24,
            zorder=3, label="a trial that grew it",
        )  # fmt: skip
        axes.set_xlim(0.5, max(ks) + 0.5)
        axes.set_ylim(bottom=0)
        where = ", ".join(f"{n} {_short(v)}" for n, v in reference.items())
        axes.text(
            0.99, 0.03, f"reference: {where}\nfinal: {_short(volumes[-1])}",
            transform=axes.transAxes, ha="right", va="bottom", fontsize=8,
        )  # fmt: skip
        axes.legend(loc="upper left", fontsize=8)
    spec = ", ".join(f"{n}:{d}" for n, d in objectives.items())
    head = f"{title}: " if title else ""
    axes.set_title(f"{head}hypervolume of {spec}", fontsize=10)
    axes.set_xlabel(
        f"trials in start order ({int(finished.sum())} of {table.num_rows} FINISHED count)"
    )
    axes.set_ylabel("hypervolume (product of the objectives' units)")
    axes.grid(True, alpha=0.3)
    _save(figure, path)
    return history, reference


def _short(value: float) -> str:
    return f"{value:.4g}"


def plot_metrics_vs_beta(
    finished: pa.Table, rows: Sequence[ReportRow], path: Path, *, title: str = ""
) -> int:
    """``map`` and ``attr_auc`` of the FINISHED trials against ``beta`` (log axis), one
    series per matching kind (and a marker per method when there are several); the table's
    naive and teacher rows as horizontal lines. Trials without a positive ``beta`` (naive
    ones, beta 0) have no place on the log axis. Writes a PNG to ``path``; returns how many
    trials were plotted."""
    beta = _floats(finished, "beta")
    kinds = (
        [_kind_of({"matching": m}) for m in finished.column("matching").to_pylist()]
        if "matching" in finished.column_names
        else ["none"] * finished.num_rows
    )
    methods = (
        [str(m) for m in finished.column("method").to_pylist()]
        if "method" in finished.column_names
        else ["-"] * finished.num_rows
    )
    distinct_methods = list(dict.fromkeys(methods))
    usable = np.isfinite(beta) & (beta > 0)
    figure = _figure(10.0, 4.2)
    grid = figure.subplots(1, 2, squeeze=False)
    plotted = 0
    for column, metric in enumerate(("map", "attr_auc")):
        axes: Axes = grid[0][column]
        values = _floats(finished, metric)
        shown = usable & np.isfinite(values)
        if column == 0:
            plotted = int(shown.sum())
        kind_names = list(MATCHING_KINDS) + sorted(set(kinds) - set(MATCHING_KINDS))
        for kind in kind_names:
            for m, method in enumerate(distinct_methods):
                mask = (
                    shown
                    & np.array([k == kind for k in kinds])
                    & np.array([x == method for x in methods])
                )
                if not mask.any():
                    continue
                label = MATCHING_KINDS.get(kind, kind)
                if len(distinct_methods) > 1:
                    label += f" ({method})"
                axes.scatter(
                    beta[mask], values[mask], s=30,
                    color=_KIND_COLORS.get(kind, f"C{4 + kind_names.index(kind)}"),
                    marker=_METHOD_MARKERS[m % len(_METHOD_MARKERS)], label=label, zorder=3,
                )  # fmt: skip
        # One teacher line (the same run heads every method's block), one naive line a method.
        teacher = next((r for r in rows if r.row == "teacher"), None)
        lines = [(teacher, "teacher", "black", ":")] if teacher is not None else []
        for row in rows:
            if row.row == "naive":
                several = len(distinct_methods) > 1
                label = "naive (table row)" + (f" ({row.method})" if several else "")
                lines.append((row, label, _KIND_COLORS["none"], "--"))
        for row, label, color, style in lines:
            value = row.metrics.get(metric)
            if value is not None and math.isfinite(value):
                axes.axhline(value, color=color, linestyle=style, linewidth=1.0, label=label)
        if shown.any():
            axes.set_xscale("log")
        else:
            _empty(axes, f"no FINISHED trial with beta > 0 and a {metric}")
        axes.set_xlabel("beta (matching loss weight, log scale)")
        axes.set_ylabel(f"{metric} (%)")
        axes.set_title(metric, fontsize=10)
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="best")
    left_out = finished.num_rows - int(usable.sum())
    head = f"{title}: " if title else ""
    figure.suptitle(
        f"{head}map and attr_auc against beta, {plotted} FINISHED trials"
        + (f" ({left_out} without a positive beta not on the axis)" if left_out else ""),
        fontsize=10,
    )
    _save(figure, path)
    return plotted


# Everything together.


def write_report(
    tracking_uri: str,
    study: str,
    *,
    parent_run_id: str,
    folder: Path,
    trials: pa.Table | None = None,
    record: StudyRecord | None = None,
) -> Report:
    """Build the report of the study run ``parent_run_id`` into ``folder`` (created).

    ``trials`` is the ``load_trials`` table of that run's trials (loaded when None);
    ``record`` the study as :func:`analysis.record.load_study_record` read it for that run
    (read when None), whose client fetches everything else.
    Raises ``NoFinishedTrialsError`` before writing anything when no trial FINISHED.
    """
    if record is not None and record.parent_run_id != parent_run_id:
        raise ValueError(
            f"record: must be of study run {parent_run_id}, got {record.parent_run_id}"
        )
    if trials is None:
        trials = (
            record.table()
            if record is not None
            else load_trials(tracking_uri, study, filter_string=parent_filter(parent_run_id))
        )
    finished = trials.filter(pc.equal(trials.column("status"), _FINISHED))
    if finished.num_rows == 0:
        counts: dict[str, int] = {}
        for status in trials.column("status").to_pylist():
            counts[str(status)] = counts.get(str(status), 0) + 1
        seen = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        raise NoFinishedTrialsError(
            f"study {study!r}: no FINISHED trial under its study run {parent_run_id} to report "
            f"on (trial runs: {seen})"
        )
    if record is None:
        record = load_study_record(study, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
    objectives = record.objectives
    rows = _rows(record, trials)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in REPORT_FILES}
    front = plot_pareto_matrix(finished, objectives, paths["pareto_matrix.png"], title=study)
    history, reference = plot_hypervolume(trials, objectives, paths["hypervolume.png"], title=study)
    plot_metrics_vs_beta(finished, rows, paths["metrics_vs_beta.png"], title=study)
    pies = pie_rows(tracking_uri, rows, client=record.client)
    if pies:
        paths["pies.csv"].write_text(render_pies_csv(pies), "utf-8")
    drawn = plot_overlays(
        tracking_uri, rows, paths["attribution_overlays.png"],
        title=f"{study}: Grad-CAM of the teacher's top-1 class", client=record.client,
    )  # fmt: skip
    written = [
        name for name in REPORT_FILES
        if name not in OPTIONAL_FILES or (name == "pies.csv" and pies)
        or (name == "attribution_overlays.png" and drawn)
    ]  # fmt: skip
    table = caption(study, parent_run_id) + "\n\n" + render_markdown(rows)
    spec = ", ".join(f"{n}:{d}" for n, d in objectives.items())
    if reference is None:
        volume = "No FINISHED trial has a finite value of every objective: no hypervolume."
    else:
        where = ", ".join(f"{n} {_short(v)}" for n, v in reference.items())
        volume = (
            f"Hypervolume after {len(history)} trials: {_short(history[-1][1])} "
            f"(reference: {where}; FINISHED trials only)."
        )
    markdown = "\n".join([
        f"# Report: study `{study}`",
        "",
        f"Study run `{parent_run_id}`: {trials.num_rows} trial runs, {finished.num_rows} "
        "FINISHED. Written by `apc report`.",
        "",
        table,
        "## Pareto front",
        "",
        f"{front} of {finished.num_rows} FINISHED trials are on the Pareto front of {spec}.",
        "",
        "![Pareto front, every pair of objectives](pareto_matrix.png)",
        "",
        "## Hypervolume over trials",
        "",
        volume,
        "",
        "![Hypervolume over trials in start order](hypervolume.png)",
        "",
        "## map and attr_auc against beta",
        "",
        "![map and attr_auc against beta](metrics_vs_beta.png)",
        "",
        *_further_sections(rows, pies, drawn),
    ])  # fmt: skip
    paths["report.md"].write_text(markdown, "utf-8")
    paths["report.csv"].write_text(render_csv(rows), "utf-8")
    return Report(
        study=study,
        parent_run_id=parent_run_id,
        folder=folder,
        files=tuple(paths[name] for name in written),
        rows=tuple(rows),
        objectives=objectives,
        trials=trials.num_rows,
        finished=finished.num_rows,
        front=front,
        hypervolume=tuple(history),
        reference=reference,
        table=table,
    )


def _further_sections(
    rows: Sequence[ReportRow], pies: Sequence[tuple[ReportRow, PieSummary]], drawn: list[str]
) -> list[str]:
    """The report's Markdown after the plots: attribution methods, PIEs, overlays."""
    lines: list[str] = []
    methods = render_method_tables(rows)
    if methods:
        lines += ["## Further attribution methods", "",
                  "The rows' maps by each further method (measured with a trial's last epoch; "
                  "the teacher's once), scored as the Grad-CAM table's.", "", methods]  # fmt: skip
    lines += ["## PIEs", ""]
    if pies:
        lines += [
            "Samples whose predicted class set differs from the teacher's (PIEs), per trial row "
            "of the table, and how the trial and the teacher fare on them against the other "
            "samples (accuracy: every label right, in %; attr_auc in %). Every statistic is in "
            "pies.csv.", "", render_pies_markdown(pies),
        ]  # fmt: skip
    else:
        lines += ["No trial row of the table logged per-sample results "
                  "(evaluation/per_sample.parquet).", ""]  # fmt: skip
    if drawn:
        lines += ["## Attribution overlays", "",
                  f"Grad-CAM of the teacher and of the {', '.join(drawn)} trials on the same "
                  "images, for the teacher's top-1 class.", "",
                  "![Teacher and student attribution overlays](attribution_overlays.png)",
                  ""]  # fmt: skip
    return lines


def log_report(tracking_uri: str, report: Report, *, client: MlflowClient | None = None) -> str:
    """Log the report's files to its study run under ``report/``; returns their artifact URI.

    ``client``: one open on ``tracking_uri`` (e.g. the ``StudyRecord``'s the report read).
    """
    if client is None:
        client = tracking_client(tracking_uri)
    for path in report.files:
        client.log_artifact(report.parent_run_id, str(path), ARTIFACT_DIR)
    run = client.get_run(report.parent_run_id)
    return f"{str(run.info.artifact_uri).rstrip('/')}/{ARTIFACT_DIR}"
