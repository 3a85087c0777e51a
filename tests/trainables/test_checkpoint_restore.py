"""A trial resumes from the older kept checkpoint when Tune's newest cannot be read.

Unit tests read checkpoints laid out as Tune keeps them (``checkpoint_<index>`` folders of a
trial's folder, each with the payload written by :func:`trainables.trial.save_payload`, as
the trainable writes it); the integration test lets real Tune write and keep them, damages the
newest from inside the trial and fails it, and Tune's retry goes on from the older one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.trial import (
    CHECKPOINT_FILE,
    TrialSetup,
    UnreadableCheckpointError,
    restore_checkpoint,
    run_tune_trial,
    save_payload,
)


def _checkpoint(trial_dir: Path, index: int, epoch: int) -> Path:
    folder = trial_dir / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    save_payload(folder, {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}})
    return folder


def _truncate(folder: Path) -> None:
    path = folder / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(folder: Path) -> None:
    (folder / CHECKPOINT_FILE).write_bytes(b"\x00not a torch file")


def _remove(folder: Path) -> None:
    (folder / CHECKPOINT_FILE).unlink()


def _tune_checkpoint(folder: Path) -> Any:
    from ray import tune

    return tune.Checkpoint(str(folder))


@pytest.mark.parametrize("damage", [_truncate, _garble, _remove], ids=lambda f: f.__name__[1:])
def test_an_unreadable_newest_checkpoint_resumes_from_the_older_one_with_a_warning(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    older = _checkpoint(tmp_path, 3, epoch=4)
    newest = _checkpoint(tmp_path, 4, epoch=5)
    damage(newest)
    with pytest.warns(UserWarning, match="older kept checkpoint") as warned:
        restored = restore_checkpoint(_tune_checkpoint(newest))
    assert restored is not None
    assert restored.payload["epoch"] == 4
    assert torch.equal(restored.payload["model"]["w"], torch.full((3,), 4.0))
    assert restored.reports_behind == 1
    (warning,) = [str(w.message) for w in warned]
    assert warning.startswith(
        f"checkpoint: resuming from the older kept checkpoint {older}: the newer cannot be "
        f"read ({newest}: "
    )
    assert warning.endswith(
        "); the 1 epoch(s) after it run again, unreported (Tune has their results)"
    )


def test_the_older_checkpoints_are_tried_newest_first(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 0, epoch=1)
    middle = _checkpoint(tmp_path, 9, epoch=10)  # index 9 before 10: by number, not by name
    _truncate(middle)
    _checkpoint(tmp_path, 8, epoch=9)
    newest = _checkpoint(tmp_path, 10, epoch=11)
    _checkpoint(tmp_path, 11, epoch=12)  # newer than the one Tune names: not Tune's choice
    (tmp_path / "checkpoint_000007").write_text("a file, not a checkpoint folder")
    _truncate(newest)
    with pytest.warns(UserWarning, match="older kept checkpoint .*checkpoint_000008"):
        restored = restore_checkpoint(_tune_checkpoint(newest))
    assert restored is not None
    assert (restored.payload["epoch"], restored.reports_behind) == (9, 2)


def test_a_readable_newest_checkpoint_is_used_without_a_warning(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    _checkpoint(tmp_path, 0, epoch=1)
    restored = restore_checkpoint(_tune_checkpoint(_checkpoint(tmp_path, 1, epoch=2)))
    assert restored is not None
    assert (restored.payload["epoch"], restored.reports_behind) == (2, 0)
    assert not [w for w in recwarn if "checkpoint" in str(w.message)]
    assert restore_checkpoint(None) is None


def test_every_kept_checkpoint_unreadable_fails_naming_each_and_why(tmp_path: Path) -> None:
    older = _checkpoint(tmp_path, 0, epoch=1)
    newest = _checkpoint(tmp_path, 1, epoch=2)
    _truncate(newest)
    _remove(older)
    with pytest.raises(UnreadableCheckpointError) as raised:
        restore_checkpoint(_tune_checkpoint(newest))
    message = str(raised.value)
    assert message.startswith(
        "checkpoint: none of the 2 checkpoint(s) Tune kept of this trial can be read, so it "
        f"cannot resume ({newest}: "
    )
    assert f"; {older}: FileNotFoundError: " in message


def test_a_checkpoint_outside_a_trial_folder_is_the_only_one_tried(tmp_path: Path) -> None:
    lone = tmp_path / "exported"
    lone.mkdir()
    save_payload(lone, {"epoch": 1})
    _checkpoint(tmp_path, 0, epoch=7)  # a sibling, but `lone` is not one of Tune's
    _garble(lone)
    with pytest.raises(UnreadableCheckpointError, match=r"none of the 1 checkpoint\(s\)"):
        restore_checkpoint(_tune_checkpoint(lone))


# Real Tune: the trial writes its checkpoints through run_tune_trial, Tune keeps two (as the
# study's RunConfig does) and retries a failed trial from the newest.

EPOCHS = 3
SETUP = TrialSetup(
    dataset="shapes",
    dataset_options={},
    num_classes=2,
    arch="vgg11_bn",
    teacher_width=8,
    epochs=EPOCHS,
)


def _damaging_run(
    config: Mapping[str, Any],
    setup: TrialSetup,
    teacher_state: Mapping[str, torch.Tensor],
    *,
    report: Any,
    resume: Mapping[str, Any] | None,
    device: torch.device | str,
) -> None:
    """Reports an epoch at a time; the first try damages its newest checkpoint after epoch 1
    and dies, as a trial whose node went away while that checkpoint was written."""
    from ray import tune

    start = int(resume["epoch"]) if resume is not None else 0
    for epoch in range(start, EPOCHS):
        report(epoch, {"loss": float(epoch), "resumed_at": float(start)}, {"epoch": epoch + 1})
        marker = Path(config["marker"])
        if epoch == 1 and not marker.exists():
            marker.touch()
            trial = tune.get_context().get_trial_id()
            kept = sorted(Path(config["storage"]).glob(f"*_{trial}_*/checkpoint_*"))
            assert len(kept) == 2, kept  # epochs 0 and 1: both kept
            _truncate(kept[-1])
            raise RuntimeError("the node went away")


def _trainable(config: dict[str, Any]) -> None:
    run_tune_trial(_damaging_run, config, SETUP, {})


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.integration
def test_tune_retries_a_trial_from_the_older_checkpoint_when_the_newest_is_damaged(
    tmp_path: Path, local_ray: None
) -> None:
    from ray import tune

    # One trial (each retry costs an actor start); every checkpoint unreadable: unit tests.
    tuner = tune.Tuner(
        _trainable,
        param_space={
            "marker": str(tmp_path / "failed-once"),
            "storage": str(tmp_path / "results" / "damaged"),
        },
        run_config=tune.RunConfig(
            name="damaged",
            storage_path=str(tmp_path / "results"),
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    grid = tuner.fit()
    assert len(grid) == 1
    result = grid[0]
    assert result.error is None
    history = result.metrics_dataframe
    # Epoch 1's checkpoint was the damaged one: the retry began after epoch 0's and ran epoch 1
    # again without reporting it (Tune has its result), so Tune's count of reports stays the
    # count of epochs, which ASHA's rungs go by.
    assert list(history["epoch"]) == [0, 1, 2]
    assert list(history["training_iteration"]) == [1, 2, 3]
    assert list(history["resumed_at"]) == [0.0, 0.0, 1.0]
