"""Analysis of finished (or running) studies, from MLflow: Pareto fronts, hypervolume, effects,
PIEs, reports.

Importing this package stays cheap: MLflow and matplotlib are imported only when a function
that needs them is called.
"""

from __future__ import annotations

from analysis.effect import EFFECT_METRICS, EffectRow, effect_table, render_effect_table
from analysis.hypervolume import (
    ReferencePointError,
    default_reference,
    hypervolume,
    hypervolume_history,
)
from analysis.pareto import (
    Direction,
    ObjectivesError,
    pareto_front,
    pareto_mask,
    parse_objectives,
)
from analysis.pies import (
    PieSummary,
    load_per_sample,
    modal_labels,
    pie_summary,
    population_pies,
)
from analysis.record import StudyRecord, load_study_record
from analysis.report import (
    NoFinishedTrialsError,
    Report,
    ReportRow,
    log_report,
    plot_hypervolume,
    plot_metrics_vs_beta,
    plot_pareto_matrix,
    write_report,
)
from analysis.runs import (
    BadFilterError,
    RunsQueryError,
    TrackingStoreError,
    UnknownStudyError,
    load_trials,
    metric_columns,
    param_columns,
)

__all__ = [
    "EFFECT_METRICS",
    "BadFilterError",
    "Direction",
    "EffectRow",
    "NoFinishedTrialsError",
    "ObjectivesError",
    "PieSummary",
    "ReferencePointError",
    "Report",
    "ReportRow",
    "RunsQueryError",
    "StudyRecord",
    "TrackingStoreError",
    "UnknownStudyError",
    "default_reference",
    "effect_table",
    "hypervolume",
    "hypervolume_history",
    "load_per_sample",
    "load_study_record",
    "load_trials",
    "log_report",
    "metric_columns",
    "modal_labels",
    "param_columns",
    "pareto_front",
    "pareto_mask",
    "parse_objectives",
    "pie_summary",
    "plot_hypervolume",
    "plot_metrics_vs_beta",
    "plot_pareto_matrix",
    "population_pies",
    "render_effect_table",
    "write_report",
]
