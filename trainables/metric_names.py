"""The canonical metric names, as trials report them and MLflow stores them (design.md).

One source of truth: the trainables report these names, the spec validates objectives and
scheduler metrics against them, and the analysis reads them back.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["METRICS", "Direction", "metric_direction"]

Direction = Literal["min", "max"]

#: name -> (the direction that is better, what it measures).
METRICS: Final[dict[str, tuple[Direction, str]]] = {
    "loss": ("min", "training loss of the last epoch"),
    "map": ("max", "VOC per-class mean average precision, %"),
    "map_samples": ("max", "the paper's sample-wise average precision, %"),
    "f1": ("max", "sample-averaged F1 at threshold 0.5, %"),
    "top1": ("max", "top-1 accuracy (single-label data), %"),
    "attr_cos": ("max", "cosine similarity of teacher and student Grad-CAM maps"),
    "attr_l2": ("min", "L2 distance of L2-normalised teacher and student Grad-CAM maps"),
    "attr_auc": ("max", "ROC-AUC of Grad-CAM maps against ground-truth masks, %"),
    "point_acc": ("max", "pointing-game accuracy of Grad-CAM maps, %"),
    "params": ("min", "number of parameters"),
    "nonzero_params": ("min", "number of non-zero parameters"),
    "model_bytes": ("min", "serialized model size in bytes"),
    "flops": ("min", "floating-point operations of one forward pass at batch 1"),
    "latency_ms": ("min", "median CPU latency at batch 1, ms"),
    "latency_ms_b32": ("min", "median CPU latency at batch 32, ms (a trial's last epoch only)"),
    "param_fraction": ("min", "non-zero parameters of the student over the teacher's parameters"),
    "model_bytes_sparse": ("min", "serialized size with mostly-zero weights stored as CSR, bytes"),
    "sparsity": ("max", "fraction of the prunable weights that are exactly zero"),
    "pie_fraction": ("min", "fraction of samples whose label differs from the teacher's"),
}


def metric_direction(name: str) -> Direction:
    """The better direction of a canonical metric; ValueError for an unknown name."""
    try:
        return METRICS[name][0]
    except KeyError:
        raise ValueError(f"metric: must be one of {sorted(METRICS)}, got {name!r}") from None
