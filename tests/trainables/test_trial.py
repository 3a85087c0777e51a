"""The Tune wrapper's checkpoint choice when Tune's snapshot names a deleted checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ray import tune

from trainables.trial import CHECKPOINT_FILE, _restorable


def _checkpoint(trial: Path, index: int, *, state: bool = True) -> Path:
    folder = trial / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    if state:
        torch.save({"epoch": index + 1}, folder / CHECKPOINT_FILE)
    return folder


def test_an_existing_checkpoint_is_kept(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, 0)
    _checkpoint(tmp_path, 1)
    assert Path(_restorable(tune.Checkpoint(str(folder))).path) == folder


def test_a_deleted_checkpoint_gives_way_to_the_newest_that_exists(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 3, state=False)  # being written when the driver died
    with pytest.warns(UserWarning, match="is gone"):
        chosen = _restorable(tune.Checkpoint(str(tmp_path / "checkpoint_000000")))
    assert Path(chosen.path) == tmp_path / "checkpoint_000002"


def test_nothing_left_means_starting_over(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="starting over"):
        assert _restorable(tune.Checkpoint(str(tmp_path / "checkpoint_000000"))) is None
    assert _restorable(None) is None
