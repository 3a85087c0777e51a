"""What a trial leaves besides its metrics, written with its last epoch's checkpoint.

With the last epoch, :func:`write_final_artifacts` evaluates the compressed model once more,
this time keeping what the per-epoch evaluation throws away, and writes into the checkpoint
folder (the driver logs each file to the trial's MLflow run, :data:`TRIAL_ARTIFACTS`):

- ``per_sample.parquet``: one row per evaluation image (:data:`trainables.evaluation.
  PER_SAMPLE_COLUMNS`, predicted class sets as lists of class indices), the input of PIE
  analysis (:mod:`analysis.pies`);
- ``attribution_maps.npz``: teacher-vs-student Grad-CAM maps of the first evaluation images
  (:mod:`trainables.overlays`; the driver draws them as ``attribution_overlay.png`` when it logs
  them);
- the further attribution methods' metrics (``attr_auc_lrp``...), returned to be reported with
  the last epoch: they cost a forward and backward pass per (image, class) pair, so they are
  measured once per trial, not every epoch.

The compressed model itself (``model.pt2``) is written by :mod:`trainables.export`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainables.artifact_names import MAPS_FILE, PER_SAMPLE_FILE, TRIAL_ARTIFACTS
from trainables.evaluation import evaluate
from trainables.evaluation_protocol import GradCamLayer, grad_cam_view
from trainables.overlays import capture_overlay_maps, save_overlay_maps

__all__ = [
    "PER_SAMPLE_FILE",
    "TRIAL_ARTIFACTS",
    "per_sample_table",
    "write_final_artifacts",
]


def per_sample_table(per_sample: Mapping[str, npt.NDArray[Any]]) -> pa.Table:
    """The per-sample columns as an Arrow table; class-set matrices [N, C] become lists."""
    columns: dict[str, pa.Array] = {}
    for name, values in per_sample.items():
        if values.ndim == 2:
            columns[name] = pa.array(
                [np.flatnonzero(row).astype(np.int16) for row in values],
                type=pa.list_(pa.int16()),
            )
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


def _further_metrics(
    model: nn.Module,
    teacher: nn.Module,
    loader: DataLoader[Any],
    methods: Sequence[str],
    *,
    multi_label: bool,
    device: torch.device | str,
    grad_cam_layer: GradCamLayer = "matched",
) -> tuple[dict[str, float], dict[str, npt.NDArray[Any]]]:
    """Metrics and per-sample columns of each further method; a method the model does not
    support (e.g. LRP on a quantized model) is left out with a warning."""
    metrics: dict[str, float] = {}
    columns: dict[str, npt.NDArray[Any]] = {}
    for method in methods:
        try:
            result = evaluate(
                model,
                loader,
                teacher=teacher,
                multi_label=multi_label,
                device=device,
                attribution_methods=(method,),
                grad_cam_layer=grad_cam_layer,
            )
        except (TypeError, NotImplementedError, RuntimeError) as error:
            warnings.warn(f"attribution method {method}: not measured: {error}", stacklevel=2)
            continue
        suffix = f"_{method}"
        metrics.update({k: v for k, v in result.metrics.items() if k.endswith(suffix)})
        columns.update({k: v for k, v in result.per_sample.items() if k.endswith(suffix)})
    return metrics, columns


def write_final_artifacts(
    model: nn.Module,
    teacher: nn.Module,
    loader: DataLoader[Any],
    folder: str | Path,
    *,
    multi_label: bool,
    attribution_methods: Sequence[str] = (),
    overlay_images: int = 8,
    device: torch.device | str = "cpu",
    grad_cam_layer: GradCamLayer = "matched",
) -> dict[str, float]:
    """Evaluate the trial's final ``model`` and write its artifacts into ``folder``.

    Args:
        model: the compressed network, on ``device``.
        teacher: the uncompressed network, on ``device``.
        loader: the evaluation split, in a fixed order.
        folder: the checkpoint folder (exists).
        multi_label: the study's prediction rule.
        attribution_methods: further methods (not ``grad_cam``) whose metrics are measured.
        overlay_images: images in the overlay (0: no overlay).
        device: where batches go.
        grad_cam_layer: where Grad-CAM is taken, in the per-sample scores and the overlays
            (:mod:`trainables.evaluation_protocol`).

    Returns:
        the further methods' metrics (``attr_auc_lrp``...), empty without further methods.
    """
    target = Path(folder)
    result = evaluate(
        model,
        loader,
        teacher=teacher,
        multi_label=multi_label,
        device=device,
        grad_cam_layer=grad_cam_layer,
    )
    further = [m for m in attribution_methods if m != "grad_cam"]
    metrics, columns = _further_metrics(
        model,
        teacher,
        loader,
        further,
        multi_label=multi_label,
        device=device,
        grad_cam_layer=grad_cam_layer,
    )
    pq.write_table(per_sample_table({**result.per_sample, **columns}), target / PER_SAMPLE_FILE)
    if overlay_images > 0:
        # A view's matched layer is the one it was split at: the overlays follow the layer.
        maps = capture_overlay_maps(
            grad_cam_view(model, layer=grad_cam_layer),
            grad_cam_view(teacher, layer=grad_cam_layer),
            loader.dataset,
            count=overlay_images,
            device=device,
        )
        save_overlay_maps(maps, target / MAPS_FILE)
    return metrics
