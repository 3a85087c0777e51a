"""Analysis of finished (or running) studies: Pareto fronts and the paper's comparison, from MLflow.

Importing this package stays cheap: ``load_trials`` imports MLflow only when it is called.
"""

from __future__ import annotations

from analysis.effect import EFFECT_METRICS, EffectRow, effect_table, render_effect_table
from analysis.pareto import (
    Direction,
    ObjectivesError,
    pareto_front,
    pareto_mask,
    parse_objectives,
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
    "ObjectivesError",
    "RunsQueryError",
    "TrackingStoreError",
    "UnknownStudyError",
    "effect_table",
    "load_trials",
    "metric_columns",
    "param_columns",
    "pareto_front",
    "pareto_mask",
    "parse_objectives",
    "render_effect_table",
]
