"""The canonical metric names, as trials report them and MLflow stores them (docs/design.md).

One source of truth: the trainables report these names, the spec validates objectives and
scheduler metrics against them, and the analysis reads them back.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "ATTRIBUTION_METHOD_LABELS",
    "ATTRIBUTION_METHOD_NAMES",
    "ATTRIBUTION_METRICS",
    "EPOCH_METRICS",
    "METRICS",
    "Direction",
    "method_metric",
    "metric_direction",
    "valid_metrics_text",
]

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

#: The attribution methods evaluation can score maps of (``trainables.attribution_methods``)
#: and how tables name them; the first, Grad-CAM, is the one every epoch is scored with.
ATTRIBUTION_METHOD_LABELS: Final[dict[str, str]] = {
    "grad_cam": "Grad-CAM",
    "integrated_gradients": "Integrated Gradients",
    "lrp": "LRP",
    "ebp": "EBP",
    "rap": "RAP",
}
ATTRIBUTION_METHOD_NAMES: Final[tuple[str, ...]] = tuple(ATTRIBUTION_METHOD_LABELS)
#: The metrics that score attribution maps; each also exists per further method (``method_metric``).
ATTRIBUTION_METRICS: Final[tuple[str, ...]] = ("attr_auc", "point_acc", "attr_cos", "attr_l2")


def method_metric(metric: str, method: str) -> str:
    """The name of attribution ``metric`` scored on ``method``'s maps: ``attr_auc_lrp``.

    Grad-CAM's are the plain names (``attr_auc``): the maps every epoch is scored with.
    """
    if metric not in ATTRIBUTION_METRICS:
        raise ValueError(f"metric: must be one of {list(ATTRIBUTION_METRICS)}, got {metric!r}")
    if method not in ATTRIBUTION_METHOD_NAMES:
        raise ValueError(f"method: must be one of {list(ATTRIBUTION_METHOD_NAMES)}, got {method!r}")
    return metric if method == ATTRIBUTION_METHOD_NAMES[0] else f"{metric}_{method}"


#: The metrics that are not a further attribution method's (the names every epoch reports).
EPOCH_METRICS: Final[tuple[str, ...]] = tuple(METRICS)

METRICS.update(
    {
        method_metric(metric, method): (
            METRICS[metric][0],
            METRICS[metric][1].replace("Grad-CAM", ATTRIBUTION_METHOD_LABELS[method])
            + " (a trial's last epoch only)",
        )
        for method in ATTRIBUTION_METHOD_NAMES[1:]
        for metric in ATTRIBUTION_METRICS
    }
)


def metric_direction(name: str) -> Direction:
    """The better direction of a canonical metric; ValueError for an unknown name."""
    try:
        return METRICS[name][0]
    except KeyError:
        raise ValueError(f"metric: must be one of {sorted(METRICS)}, got {name!r}") from None


def valid_metrics_text() -> str:
    """The valid metric names for an error message: the epoch metrics, then the family."""
    return (
        f"{', '.join(EPOCH_METRICS)}, and {'/'.join(ATTRIBUTION_METRICS)}_<method> for "
        f"{'/'.join(ATTRIBUTION_METHOD_NAMES[1:])}"
    )
