"""The report's rows: which run stands for the teacher and for each matching kind.

Per method of the study (first-seen order), a teacher row and one row per matching kind
(:data:`MATCHING_KINDS`). A kind's row is the trial of the study's first enqueued setting of
that kind whose trial FINISHED (the enqueued settings and their trials come from
``analysis.effect.effect_rows``), else the FINISHED trial of that kind with the best ``map``
(ties: the one that started first). Also here: which further attribution methods and extra
CSV columns the rows have, and the PIE summary of each trial row.

Everything but :func:`report_rows` and :func:`pie_rows` works on a
:class:`analysis.record.StudyRecord` and a trials table already read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from analysis.effect import effect_rows
from analysis.layout import SETTING_PARAMS, Direction
from analysis.pies import PieSummary, load_per_sample, pie_summary
from analysis.record import StudyRecord, load_study_record, objectives_of_params
from analysis.runs import tracking_client
from trainables.matching_kinds import MATCHING_KIND_LABELS
from trainables.metric_names import (
    ATTRIBUTION_METHOD_NAMES,
    ATTRIBUTION_METRICS,
    METRICS,
    method_metric,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "FINISHED",
    "MATCHING_KINDS",
    "REPORT_METRICS",
    "ReportRow",
    "extra_columns",
    "further_methods",
    "kind_of",
    "pie_rows",
    "report_rows",
    "rows_of",
    "study_objectives",
]

#: The table's metric columns (docs/design.md#metric-names), in order.
REPORT_METRICS: Final[tuple[str, ...]] = (
    "map",
    "f1",
    "attr_auc",
    "point_acc",
    "attr_cos",
    "attr_l2",
    "params",
)
#: Matching kind (the ``matching`` param) -> its row's name, in the table's order: the
#: trainables' kinds and labels (:data:`trainables.matching_kinds.MATCHING_KIND_LABELS`).
MATCHING_KINDS: Final[dict[str, str]] = dict(MATCHING_KIND_LABELS.items())
#: The status of a trial run that completed.
FINISHED: Final = "FINISHED"


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


def study_objectives(parent_params: Mapping[str, str]) -> dict[str, Direction]:
    """The study's objectives from its parent run's ``objectives.<metric>`` params, in the
    order MLflow gives them; ``DEFAULT_OBJECTIVES`` when there are none (what a report uses
    when the study run holds no effective spec, ``StudyRecord.objectives``)."""
    return objectives_of_params(parent_params)


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
    return rows_of(record, trials)


def rows_of(record: StudyRecord, trials: pa.Table) -> list[ReportRow]:
    """:func:`report_rows` of a study already read: ``record`` and its ``trials`` table."""
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
                method,
                "teacher",
                "teacher run" if teacher_id else "no teacher run",
                teacher_setting,
                "teacher" if teacher_id else None,
                teacher_id,
                teacher_metrics,
            )
        )
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


def kind_of(record: Mapping[str, Any]) -> str:
    """A trial's matching kind: its ``matching`` param, ``none`` (the trainables' default)
    when it has none."""
    kind = record.get("matching")
    return kind if isinstance(kind, str) else "none"


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
        if record["status"] == FINISHED:
            return _trial_row(method, name, "enqueued", record)
        note = note or f"enqueued trial {record['status']}"
    candidates = [
        r for r in mine if kind_of(r) == kind and r["status"] == FINISHED and _finite(r.get("map"))
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


# Further attribution methods: which the rows have.


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


# PIEs: from the trials' per-sample artifacts.


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
