"""Shared test settings: deterministic seeds and a small, fixed thread count."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
