"""Ray's OptunaSearch, except that a NaN or missing objective reaches Optuna as its worst value.

Ray 2.60's ``OptunaSearch.on_trial_complete`` reads each objective from the trial's final
result and calls ``optuna.Study.tell``; a NaN (or None) makes ``tell`` raise, Ray logs the
error as a warning and the Optuna trial stays RUNNING, so the sampler never learns from it.
The same happens to a result that holds no objective at all (a trial stopped before its first
report ends with Tune's auto-filled result): Ray tells ``[None, None, ...]`` as COMPLETE.
This subclass only rewrites such results (policy: :mod:`study.objectives`) before handing them
to Ray's own code, which stays in charge of everything else (FAIL on errors, PRUNED when
nothing was measured, the bookkeeping of finished trials).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from ray.tune.search.optuna import OptunaSearch

from study.objectives import sampler_substitutes
from trainables.metric_names import Direction

__all__ = ["NanSafeOptunaSearch"]

logger = logging.getLogger(__name__)


class NanSafeOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna ``-inf``/``+inf`` for an objective a trial lacks."""

    def _objectives(self) -> dict[str, Direction]:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        return {str(m): cast(Direction, d) for m, d in zip(metrics, modes, strict=True)}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        objectives = self._objectives()
        if result is not None and all(result.get(name) is None for name in objectives):
            # Nothing measured (e.g. stopped before its first report, whose last result is
            # Tune's auto-filled one): Ray would tell [None, ...] as COMPLETE, which Optuna
            # refuses. Without a result Ray tells PRUNED, or FAIL after an error.
            result = None
        substitutes = {} if error else sampler_substitutes(result, objectives)
        if substitutes and result is not None:
            told = ", ".join(
                f"{name}={sub.value} ({sub.reason})" for name, sub in substitutes.items()
            )
            logger.info("trial %s: objectives without a usable value, told: %s", trial_id, told)
            result = {**result, **{name: sub.value for name, sub in substitutes.items()}}
        super().on_trial_complete(trial_id, result=result, error=error)
