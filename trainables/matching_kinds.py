"""The matching kinds as data: their names, the report's label of each, which are per class.

One source of truth for every layer that names a kind: :mod:`trainables.matching` computes
them, the method descriptors (:mod:`trainables.methods`) validate a spec's ``matching``
against them, and ``apc report`` labels and orders its rows by them. This module imports no
torch, so ``apc validate`` and the analysis can read it cheaply.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "CLASS_SPECIFIC_KINDS",
    "MATCHING_KINDS",
    "MATCHING_KIND_LABELS",
    "MatchingKind",
]

MatchingKind = Literal["none", "ewa", "swa", "sswa", "gradcam_cos"]

#: kind -> the label of its row in ``apc report`` (in the table's order). ``none`` is plain
#: compression (naive KD); the paper's three kinds next; then ``gradcam_cos``, the loss of
#: "Good Teachers Explain" (Parchami-Araghi et al., ECCV 2024): 1 - cos of Grad-CAM maps.
MATCHING_KIND_LABELS: Final[dict[MatchingKind, str]] = {
    "none": "naive",
    "ewa": "EWA",
    "swa": "SWA",
    "sswa": "SSWA",
    "gradcam_cos": "Grad-CAM cos (ECCV'24)",
}

#: Every kind, in the report's order.
MATCHING_KINDS: Final[tuple[MatchingKind, ...]] = tuple(MATCHING_KIND_LABELS)

#: The kinds whose maps explain a class (the teacher's top-1 by default): a Grad-CAM map
#: ReLU(sum_c w_c A_c) with w_c = mean_hw(d y / d A_c). EWA's map has no class.
CLASS_SPECIFIC_KINDS: Final[frozenset[MatchingKind]] = frozenset({"swa", "sswa", "gradcam_cos"})
