"""The specs apc ships: the demo (``apc run`` with no spec runs it) and one preset per
compression method beyond distillation, each opening with the command that runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["DEMO_SPEC", "PRESETS_DIR", "preset_paths"]

#: The folder of the shipped specs.
PRESETS_DIR: Final = Path(__file__).parent
#: The embedded default spec of ``apc run`` and ``make demo``.
DEMO_SPEC: Final = PRESETS_DIR / "demo.yaml"


def preset_paths() -> tuple[Path, ...]:
    """Every shipped spec, the demo first."""
    return (DEMO_SPEC, *sorted(p for p in PRESETS_DIR.glob("*.yaml") if p != DEMO_SPEC))
