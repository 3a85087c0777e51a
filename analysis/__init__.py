"""Analysis of finished (or running) studies, from MLflow: Pareto fronts, hypervolume, effects.

Importing this package stays cheap: ``load_trials`` imports MLflow only when it is called.
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
    "ReferencePointError",
    "RunsQueryError",
    "TrackingStoreError",
    "UnknownStudyError",
    "default_reference",
    "effect_table",
    "hypervolume",
    "hypervolume_history",
    "load_trials",
    "metric_columns",
    "param_columns",
    "pareto_front",
    "pareto_mask",
    "parse_objectives",
    "render_effect_table",
]
