"""The compressed model as a file that loads without this project's code.

``torch.export`` traces the network into an ``ExportedProgram`` of ATen operations with its
weights; ``torch.export.save`` writes it as one ``.pt2`` archive. Loading needs only PyTorch:

    model = torch.export.load("model.pt2").module()
    logits = model(images)          # images [B, 3, S, S] float32, normalised; B is dynamic

The program is traced in eval mode (BN statistics, no dropout); a pruned network is saved at
its pruned shape, and unstructured zeros are stored densely (``model_bytes_sparse`` measures
what sparse storage would save).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

# MODEL_FILE (the file name in a trial's checkpoint and its MLflow artifacts) is defined
# without torch, for the driver and the analysis.
from trainables.artifact_names import MODEL_FILE

__all__ = ["MODEL_FILE", "export_model", "load_exported"]


def export_model(model: nn.Module, image_size: int, path: str | Path) -> Path:
    """Save ``model`` (any device and mode; left unchanged) as an exported program at ``path``.

    The batch dimension is dynamic; the image side is fixed at ``image_size``.
    """
    probe = copy.deepcopy(model).cpu().eval()
    # Batch 2: a batch of 1 would be specialised as a constant despite the dynamic marker.
    example = (torch.zeros(2, 3, image_size, image_size),)
    program = torch.export.export(probe, example, dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    target = Path(path)
    torch.export.save(program, target)
    return target


def load_exported(path: str | Path) -> nn.Module:
    """The module of an exported program saved by :func:`export_model` (plain PyTorch)."""
    module: nn.Module = torch.export.load(Path(path)).module()
    return module
