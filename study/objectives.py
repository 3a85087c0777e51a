"""What the search is told when a finished trial has no usable value for an objective.

Why this exists: ``attr_auc`` and the other attribution metrics are computed over the
(image, class) pairs a student predicts correctly, so a student that predicts no positive label
reports NaN. Ray's ``OptunaSearch`` passes the final values to ``optuna.Study.tell`` as they
are; Optuna refuses NaN (and None), Ray only logs the refusal, and the trial stays RUNNING in
Optuna's study for good: the sampler never learns that this region of the space is bad.

The policy, in one place so the searcher (``study.search``) and the MLflow layer
(``study.tracking``) agree on it:

* a NaN or missing objective of a trial that reported at least one objective counts as the
  worst value of its direction: ``-inf`` for ``max``, ``+inf`` for ``min``. Optuna 5 accepts
  infinities in multi-objective ``tell`` (only NaN is refused, ``optuna/study/_tell.py``) and its
  non-dominated sort and hypervolume subset selection treat them as ordinary worst values
  (``optuna/_hypervolume/hssp.py`` guards ``inf - inf``); ``tests/study/test_nan_objectives.py``
  checks this for the NSGA-II, TPE and random samplers the specs offer. A trial stays on the
  Pareto front only through its other objectives, which is what "worst" should mean;
* a result with none of the objectives (a trial stopped or failed before its first report)
  is told PRUNED, or FAIL when the trial errored: there is nothing to score;
* MLflow logs a NaN metric as NaN (so the latest value is never an earlier epoch's number and
  ``apc pareto`` leaves the trial off the front, as the sampler does) and the trial's run gets
  the tag :data:`NAN_TAG` naming each such objective, why it has no value, and what the sampler
  was told.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from analysis.layout import NAN_TAG
from trainables.metric_names import Direction

# NAN_TAG, the tag's key, is the layout's (analysis.layout), re-exported here.
__all__ = ["NAN_TAG", "Substitute", "sampler_substitutes", "tag_text", "worst_value"]

#: Why an attribution metric is NaN (see trainables.evaluation): it averages over the
#: (image, class) pairs predicted correctly, so it has nothing to average when there are none.
_NAN_CAUSES = {
    "attr_auc": "no correctly predicted (image, class) pair with a scorable mask "
    "(e.g. the student predicts no positive label)",
    "point_acc": "no correctly predicted (image, class) pair with a mask "
    "(e.g. the student predicts no positive label)",
    "attr_cos": "no correctly predicted (image, class) pair to compare teacher and student "
    "maps on (e.g. the student predicts no positive label)",
    "attr_l2": "no correctly predicted (image, class) pair to compare teacher and student "
    "maps on (e.g. the student predicts no positive label)",
}


def worst_value(direction: Direction) -> float:
    """The value no trial can be worse than in ``direction``: ``-inf`` for max, ``+inf`` for min."""
    return -math.inf if direction == "max" else math.inf


def _problem(name: str, value: Any) -> str | None:
    """Why ``value`` is no usable objective value, or None when it is one."""
    if value is None:
        return "missing from the trial's final result"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"not a number ({value!r})"
    if math.isnan(number):
        cause = _NAN_CAUSES.get(name)
        return f"NaN: {cause}" if cause else "NaN"
    return None


class Substitute(NamedTuple):
    """What the sampler is told for one objective, and why the trial's own value is unusable."""

    value: float
    reason: str


def sampler_substitutes(
    result: Mapping[str, Any] | None, objectives: Mapping[str, Direction]
) -> dict[str, Substitute]:
    """The objectives of ``result`` the sampler must be told the worst value for, and why.

    Empty when every objective is usable, and also when the result holds none of them at all
    (nothing was measured: the trial is told PRUNED or FAIL, see the module docstring).
    """
    if not result:
        return {}
    values = {name: result.get(name) for name in objectives}
    if all(value is None for value in values.values()):
        return {}
    substitutes: dict[str, Substitute] = {}
    for name, direction in objectives.items():
        problem = _problem(name, values[name])
        if problem is not None:
            substitutes[name] = Substitute(worst_value(direction), problem)
    return substitutes


def tag_text(substitutes: Mapping[str, Substitute]) -> str:
    """The :data:`NAN_TAG` value: one line per objective, ``name: why; sampler told value``."""
    return "\n".join(
        f"{name}: {sub.reason}; the sampler was told {sub.value}"
        for name, sub in substitutes.items()
    )
