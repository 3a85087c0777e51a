"""Settings every study test shares."""

from __future__ import annotations

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
