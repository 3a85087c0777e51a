"""The paper's comparison within one study: the teacher beside each enqueued setting.

A study's ``enqueue`` list holds the settings a user wants measured for sure, e.g. the
paper's naive / EWA / SWA / SSWA at a paper-like beta. This table puts each one's final
metrics (accuracy, attribution against the masks, attribution against the teacher) under the
teacher's, read from MLflow (:class:`analysis.record.StudyRecord`): the study's spec says which
settings were enqueued, and the first trial whose params equal a setting is its row.

MLflow is imported when ``effect_table`` is called, not when this module is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from analysis.record import StudyRecord, load_study_record

__all__ = ["EFFECT_METRICS", "EffectRow", "effect_rows", "effect_table", "render_effect_table"]

#: The columns of the paper's tables (docs/design.md#metric-names).
EFFECT_METRICS: Final[tuple[str, ...]] = ("map", "attr_auc", "point_acc", "attr_cos", "attr_l2")


@dataclass(frozen=True)
class EffectRow:
    """One row: ``setting`` ("teacher" or ``key=value`` pairs), its run (None if none ran)."""

    setting: str
    run_id: str | None
    metrics: Mapping[str, float]


def _label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in point.items())


def _matches(point: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    return all(params.get(key) == str(value) for key, value in point.items())


def effect_table(
    tracking_uri: str, study: str, *, parent_run_id: str | None = None
) -> list[EffectRow]:
    """The teacher and the enqueued settings of ``study`` with their final metrics.

    Args:
        tracking_uri: the MLflow store.
        study: the study's name (its experiment).
        parent_run_id: the study run to read (default: the latest one of the experiment).

    Raises:
        UnknownStudyError: no experiment or no study run of that name
            (:func:`analysis.record.load_study_record`).
    """
    record = load_study_record(study, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
    return effect_rows(record)


def effect_rows(record: StudyRecord) -> list[EffectRow]:
    """The teacher and the enqueued settings of a study ``record`` with their final metrics."""

    def row(setting: str, run: Any | None) -> EffectRow:
        if run is None:
            return EffectRow(setting, None, {})
        metrics = {
            name: run.data.metrics[name] for name in EFFECT_METRICS if name in run.data.metrics
        }
        return EffectRow(setting, run.info.run_id, metrics)

    rows = [row("teacher", record.teacher)]
    for point in record.enqueued:
        run = next((r for r in record.trials if _matches(point, r.data.params)), None)
        rows.append(row(_label(point), run))
    return rows


def render_effect_table(rows: Sequence[EffectRow]) -> str:
    """``rows`` as a Markdown table; a metric a run lacks (or NaN) shows as ``-``."""

    def cell(value: float | None) -> str:
        if value is None or math.isnan(value):
            return "-"
        # Percentages with one decimal; the map distances and similarities (< 2) with 3 digits.
        return f"{value:.1f}" if value >= 2 else f"{value:.3g}"

    lines = [
        "| setting | " + " | ".join(EFFECT_METRICS) + " |",
        "|---|" + "---|" * len(EFFECT_METRICS),
    ]
    for r in rows:
        cells = [cell(r.metrics.get(name)) for name in EFFECT_METRICS]
        lines.append(f"| {r.setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
