"""Settings every study test shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

#: ``--set`` values of a tiny real study: one epoch of a narrow student over 32 images of 32 px
#: (the teacher too), two trials at a time; seconds per trial on a CPU.
TINY_STUDY_SETTINGS: tuple[str, ...] = (
    "epochs=1",
    "dataset.train_size=32",
    "dataset.val_size=16",
    "dataset.image_size=32",
    "teacher.epochs=1",
    "training.batch_size=16",
    "max_concurrent=2",
)


def tiny_run_args(
    name: str, tracking_uri: str, storage: Path, *settings: str, trials: int = 3
) -> list[str]:
    """``apc run``'s arguments for a tiny real study (:data:`TINY_STUDY_SETTINGS`, then
    ``settings``) named ``name``, tracked at ``tracking_uri``, Tune's files under ``storage``."""
    args = ["run", "--name", name, "--trials", str(trials), "--tracking-uri", tracking_uri]
    args += ["--storage", str(storage)]
    for setting in (*TINY_STUDY_SETTINGS, *settings):
        args += ["--set", setting]
    return args


@pytest.fixture(autouse=True)
def _no_weights_download(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep preflight off the network and out of the user's torch hub cache.

    A spec with ``teacher.pretrained: true`` (the paper presets) makes ``input_problems`` look
    for the ImageNet weights and, when they are missing, probe their download host (or the
    HTTPS proxy). Here the cache is a folder that does not exist, the host a closed port and
    no proxy is set, so every such spec gets the same answer on every machine, at once, and no
    test reaches download.pytorch.org.
    """
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))
    monkeypatch.setattr("study.preflight.WEIGHTS_HOST", ("127.0.0.1", 1))
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One local Ray for a module's studies (the runner leaves a Ray it did not start
    running, so they share it) and a folder with an SQLite store: ``(tracking URI, folder)``."""
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    root = tmp_path_factory.mktemp("studies")
    try:
        yield f"sqlite:///{root}/mlflow.db", root
    finally:
        ray.shutdown()
