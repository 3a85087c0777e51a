"""The names of the files a trial leaves in its last checkpoint, and where they go in MLflow.

Kept apart from the modules that write them (:mod:`trainables.export`,
:mod:`trainables.overlays`, :mod:`trainables.trial_artifacts`, all of which import torch) so
that the driver and the analysis (:mod:`analysis.layout`) can name them without importing
torch.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DRAWN_ARTIFACTS",
    "MAPS_FILE",
    "MODEL_FILE",
    "OVERLAY_FILE",
    "PER_SAMPLE_FILE",
    "TRIAL_ARTIFACTS",
]

#: The exported compressed model (``torch.export.load(path).module()`` loads it).
MODEL_FILE: Final = "model.pt2"
#: One row per evaluation image (:data:`trainables.evaluation.PER_SAMPLE_COLUMNS`).
PER_SAMPLE_FILE: Final = "per_sample.parquet"
#: Teacher-vs-student attribution maps of the first evaluation images, and their drawing.
MAPS_FILE: Final = "attribution_maps.npz"
OVERLAY_FILE: Final = "attribution_overlay.png"
#: File in a trial's last checkpoint -> the folder of the trial's MLflow artifacts it goes to.
TRIAL_ARTIFACTS: Final[dict[str, str]] = {
    MODEL_FILE: "model",
    PER_SAMPLE_FILE: "evaluation",
    MAPS_FILE: "attributions",
}
#: Files the driver draws when it logs a trial's checkpoint files (drawing is analysis's, which
#: a trial may not import) -> their MLflow folder: the overlay is drawn from MAPS_FILE.
DRAWN_ARTIFACTS: Final[dict[str, str]] = {OVERLAY_FILE: "attributions"}
