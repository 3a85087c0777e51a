"""Teacher-vs-student attribution overlays: the maps of a few fixed images, saved and drawn.

A trial keeps, with its last epoch, the Grad-CAM maps of its compressed model and of the teacher
on the first ``count`` images of the evaluation split, for the teacher's top-1 class of each
image (the class SWA matches, so every trial of a study explains the same class of the same
image). They are saved as one ``.npz`` (:data:`MAPS_FILE`); what is drawn from them is
analysis's: :func:`analysis.report.plots.draw_overlays` draws a trial's teacher-vs-student grid
(:data:`OVERLAY_FILE`, drawn by the driver when it logs the maps) and ``apc report``'s grid of
several trials.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from trainables.artifact_names import MAPS_FILE
from trainables.data import denormalize
from trainables.models import eval_mode

__all__ = [
    "MAPS_FILE",
    "OverlayMaps",
    "capture_overlay_maps",
    "load_overlay_maps",
    "save_overlay_maps",
]


@dataclass(frozen=True)
class OverlayMaps:
    """Maps of ``N`` images, ready to draw.

    Attributes:
        images: uint8 [N, H, W, 3], the images as RGB.
        indices: int64 [N], their indices in the evaluation split.
        targets: int64 [N], the explained class of each (the teacher's top-1).
        class_names: the data set's class names, or empty.
        teacher: float32 [N, H, W], the teacher's maps scaled to [0, 1] per image (or empty
            [0, H, W] without a teacher).
        student: float32 [N, H, W], the compressed model's maps scaled the same way.
    """

    images: npt.NDArray[np.uint8]
    indices: npt.NDArray[np.int64]
    targets: npt.NDArray[np.int64]
    class_names: tuple[str, ...]
    teacher: npt.NDArray[np.float32]
    student: npt.NDArray[np.float32]


def _unit_scale(maps: Tensor) -> npt.NDArray[np.float32]:
    """[N, H, W] maps each divided by its maximum (all-zero maps stay zero)."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1).float().cpu().numpy()


def capture_overlay_maps(
    model: nn.Module,
    teacher: nn.Module | None,
    dataset: Any,
    *,
    count: int,
    device: torch.device | str = "cpu",
) -> OverlayMaps:
    """Grad-CAM maps of ``model`` and ``teacher`` on the first ``count`` images of ``dataset``.

    Args:
        model: the compressed network (any model ``grad_cam_map`` explains), on ``device``.
        teacher: the uncompressed network on ``device``; None explains ``model``'s own top-1.
        dataset: indexable samples with ``image`` [3, H, W] (normalised); ``classes`` is used
            when it has them.
        count: how many images (fewer when the data set is smaller); must be >= 1.
        device: where the images go.

    Both networks are explained in eval mode; their train/eval flags are restored.
    """
    from trainables.attribution_methods import grad_cam_map  # captum: imported when used

    if count < 1:
        raise ValueError(f"count: must be a positive integer, got {count}")
    size = min(count, len(dataset))
    images = torch.stack([dataset[i]["image"] for i in range(size)]).to(device)
    with eval_mode(model, teacher):
        reference = teacher if teacher is not None else model
        with torch.no_grad():
            targets = reference(images).argmax(dim=1)
        student_maps = grad_cam_map(model, images, targets).detach()
        teacher_maps = (
            grad_cam_map(teacher, images, targets).detach() if teacher is not None else None
        )
    rgb = denormalize(images.detach().cpu()).clamp(0, 1).permute(0, 2, 3, 1)
    height, width = rgb.shape[1:3]
    return OverlayMaps(
        images=(rgb * 255).round().to(torch.uint8).numpy(),
        indices=np.arange(size, dtype=np.int64),
        targets=targets.cpu().numpy().astype(np.int64),
        class_names=tuple(getattr(dataset, "classes", ())),
        teacher=(
            _unit_scale(teacher_maps)
            if teacher_maps is not None
            else np.zeros((0, height, width), np.float32)
        ),
        student=_unit_scale(student_maps),
    )


def save_overlay_maps(maps: OverlayMaps, path: str | Path) -> Path:
    """Write ``maps`` as a compressed ``.npz`` (maps stored as float16, plenty for drawing)."""
    target = Path(path)
    with target.open("wb") as file:
        np.savez_compressed(
            file,
            images=maps.images,
            indices=maps.indices,
            targets=maps.targets,
            class_names=np.array(maps.class_names, dtype=str),
            teacher=maps.teacher.astype(np.float16),
            student=maps.student.astype(np.float16),
        )
    return target


def load_overlay_maps(path: str | Path) -> OverlayMaps:
    """Read what :func:`save_overlay_maps` wrote (no pickles: ``allow_pickle=False``)."""
    with np.load(Path(path), allow_pickle=False) as data:
        return OverlayMaps(
            images=data["images"].astype(np.uint8),
            indices=data["indices"].astype(np.int64),
            targets=data["targets"].astype(np.int64),
            class_names=tuple(str(name) for name in data["class_names"]),
            teacher=data["teacher"].astype(np.float32),
            student=data["student"].astype(np.float32),
        )
