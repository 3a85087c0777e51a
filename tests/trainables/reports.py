"""A recording ``CheckpointReporter`` for the trainables' tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from trainables.loop import TrainState


@dataclass
class Reports:
    """Every ``report(epoch, metrics, payload, model=...)`` call, in order."""

    epochs: list[int] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    payloads: list[dict[str, Any]] = field(default_factory=list)
    models: list[nn.Module | None] = field(default_factory=list)

    def __call__(
        self,
        epoch: int,
        metrics: dict[str, float],
        payload: Mapping[str, Any],
        /,
        *,
        model: nn.Module | None = None,
    ) -> None:
        self.epochs.append(epoch)
        self.metrics.append(metrics)
        self.payloads.append(dict(payload))
        self.models.append(model)

    def record(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        """The loop's ``Reporter`` form (``run_distillation``'s ``report``): the state's dict
        as the payload, no model."""
        self(epoch, metrics, state.as_dict())
