"""Settings every study test shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


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
