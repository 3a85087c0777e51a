"""Analysis of finished (or running) studies: Pareto fronts over the trials MLflow recorded.

Importing this package stays cheap: ``load_trials`` imports MLflow only when it is called.
"""

from __future__ import annotations

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
    "BadFilterError",
    "Direction",
    "ObjectivesError",
    "RunsQueryError",
    "TrackingStoreError",
    "UnknownStudyError",
    "load_trials",
    "metric_columns",
    "param_columns",
    "pareto_front",
    "pareto_mask",
    "parse_objectives",
]
