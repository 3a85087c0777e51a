"""The paper's comparison within one study: the teacher beside each enqueued setting.

A study's ``enqueue`` list holds the settings a user wants measured for sure, e.g. the
paper's naive / EWA / SWA / SSWA at a paper-like beta. This table puts each one's final
metrics (accuracy, attribution against the masks, attribution against the teacher) under the
teacher's, read from MLflow: the parent run's ``enqueue`` param says which settings were
enqueued, and the first trial whose params equal a setting is its row.

MLflow is imported when ``effect_table`` is called, not when this module is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from analysis.runs import UnknownStudyError

__all__ = ["EFFECT_METRICS", "EffectRow", "effect_table", "render_effect_table"]

#: The columns of the paper's tables (design.md, "MLflow layout" names).
EFFECT_METRICS: Final[tuple[str, ...]] = ("map", "attr_auc", "point_acc", "attr_cos", "attr_l2")

_ROLE: Final = "apc.role"
_PARENT: Final = "mlflow.parentRunId"


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
        UnknownStudyError: no experiment or no study run of that name.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise UnknownStudyError(f"study {study!r}: no such experiment in {tracking_uri}")
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=10000
    )
    parents = [r for r in runs if r.data.tags.get(_ROLE) == "study"]
    if parent_run_id is not None:
        parents = [r for r in parents if r.info.run_id == parent_run_id]
    if not parents:
        raise UnknownStudyError(f"study {study!r}: no study run in {tracking_uri}")
    parent = parents[-1]
    children = [r for r in runs if r.data.tags.get(_PARENT) == parent.info.run_id]
    enqueued: Sequence[Mapping[str, Any]] = json.loads(parent.data.params.get("enqueue", "[]"))

    def row(setting: str, run: Any | None) -> EffectRow:
        if run is None:
            return EffectRow(setting, None, {})
        metrics = {
            name: run.data.metrics[name] for name in EFFECT_METRICS if name in run.data.metrics
        }
        return EffectRow(setting, run.info.run_id, metrics)

    teacher = next((r for r in children if r.data.tags.get(_ROLE) == "teacher"), None)
    trials = [r for r in children if r.data.tags.get(_ROLE) == "trial"]
    rows = [row("teacher", teacher)]
    for point in enqueued:
        run = next((r for r in trials if _matches(point, r.data.params)), None)
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
