"""The compressed model saved as an exported program, loaded back with plain PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainables.export import export_model, load_exported
from trainables.models import build_model
from trainables.structured_pruning import prune_structured


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
def test_a_pruned_model_round_trips_with_any_batch_size(arch: str, tmp_path: Path) -> None:
    model = build_model(arch, num_classes=5, image_size=32, width_divisor=8).eval()
    pruned = prune_structured(model, rate=0.5, image_size=32).model.train()
    path = export_model(pruned, 32, tmp_path / "model.pt2")
    assert pruned.training  # exported from an eval-mode copy, the model is left as it was
    # What a user without this project runs:
    loaded = torch.export.load(path).module()
    assert isinstance(load_exported(path), torch.nn.Module)
    for batch in (1, 5):
        images = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(images), pruned.eval()(images))
        pruned.train()
