"""The frozen teacher's outputs on the training set, computed once per loop run.

Why: a distillation step runs the teacher's whole body for KD logits and matching maps, but
the teacher never changes and, without random augmentation, neither does a training image. On
a /4 VGG teacher and a /8 student the teacher's forward pass is over half of a step's cost, so
running it once over the training set (in index order, fixed batches) instead of once per
epoch makes every later epoch about twice as fast. The cached outputs are the matched-layer
features and the logits; maps are still derived per batch from the cached features through
the head only (SSWA draws fresh drop masks each step, as without the cache).

Values equal the uncached path's up to float rounding (batch composition differs), and they
are the same on every run: a resumed trial rebuilds the identical cache. Under bf16 or fp16
(:mod:`trainables.precision`) the teacher runs under the same autocast as the uncached path
and the cache holds that dtype, half fp32's bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainables.models import forward_features, forward_head
from trainables.precision import Accelerator

__all__ = ["DEFAULT_MAX_CACHE_BYTES", "TeacherCache"]

#: A cache larger than this is not built (the loop then runs the teacher every step).
DEFAULT_MAX_CACHE_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class TeacherCache:
    """Teacher features [N, C, h, w] and logits [N, K], row ``i`` for sample index ``i``."""

    features: Tensor
    logits: Tensor

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher: nn.Module,
        batches: Iterable[Mapping[str, Any]],
        *,
        size: int,
        device: torch.device,
        max_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        accelerator: Accelerator | None = None,
    ) -> TeacherCache | None:
        """Run ``teacher`` (in eval mode) over ``batches`` that cover sample indices 0..size-1.

        Args:
            teacher: the frozen teacher, on ``device``, in eval mode.
            batches: batches with ``image`` [B, 3, H, W] and ``index`` [B], in a fixed order.
            size: the number of samples (indices run from 0 to ``size - 1``).
            device: where the cache lives (the training device).
            max_bytes: give up (return None) when the cache would be larger than this.
            accelerator: the loop's autocast and batch copies (default: fp32, plain copies);
                its device must be ``device``.

        Returns:
            The cache, or None when it would exceed ``max_bytes`` or ``size`` is 0.
        """
        where = torch.device(device)
        run = accelerator or Accelerator.plain(where)
        if not run.runs_on(where):
            raise ValueError(f"accelerator: must be on device {where}, got {run.device}")
        features: Tensor | None = None
        logits: Tensor | None = None
        filled = torch.zeros(size, dtype=torch.bool)
        for batch in batches:
            images = run.images(batch["image"])
            index = torch.as_tensor(batch["index"], dtype=torch.int64)
            with run.autocast():
                batch_features = forward_features(teacher, images)
                batch_logits = forward_head(teacher, batch_features)
            if features is None or logits is None:
                per_sample = batch_features[0].numel() + batch_logits[0].numel()
                if size * per_sample * batch_features.element_size() > max_bytes:
                    return None
                features = batch_features.new_empty((size, *batch_features.shape[1:]))
                logits = batch_logits.new_empty((size, *batch_logits.shape[1:]))
            rows = index.to(device)
            features[rows] = batch_features
            logits[rows] = batch_logits
            filled[index] = True
        if features is None or logits is None:
            return None
        if not bool(filled.all()):
            missing = int((~filled).sum())
            raise ValueError(f"batches: must cover every index 0..{size - 1}, {missing} missing")
        return cls(features, logits)

    def lookup(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Features [B, C, h, w] and logits [B, K] of the samples with indices ``index`` [B]."""
        rows = torch.as_tensor(index, dtype=torch.int64).to(self.features.device)
        return self.features[rows], self.logits[rows]
