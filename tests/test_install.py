"""The locked environment: pyproject's ranges, requirements.lock and README agree.

`make venv` installs requirements.lock as is (hashes required, no resolving), so a lock that
drifted from pyproject would install a program the ranges never allowed; these checks keep
the three in step without installing anything.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
#: The packages README's "Tested with" line names, as the Makefile's KEY_PACKAGES.
KEY_PACKAGES = ("torch", "torchvision", "ray", "optuna", "mlflow", "numpy", "pyarrow")
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", re.MULTILINE)


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


def _locked() -> dict[str, list[Version]]:
    """Package -> its pinned versions (several where markers split by Python version)."""
    pins: dict[str, list[Version]] = {}
    for name, version in _PIN.findall(LOCK.read_text()):
        pins.setdefault(canonicalize_name(name), []).append(Version(version))
    return pins


def test_every_requirement_has_an_upper_bound_at_a_tested_major() -> None:
    unbounded = [
        str(r) for r in _requirements() if not any(s.operator in ("<", "==") for s in r.specifier)
    ]
    assert unbounded == []


def test_the_lock_pins_every_requirement_inside_its_range_with_hashes() -> None:
    pins = _locked()
    problems = []
    for requirement in _requirements():
        versions = pins.get(canonicalize_name(requirement.name))
        if not versions:
            problems.append(f"{requirement.name}: not in the lock")
        problems += [
            f"{requirement.name}: locked {v} outside {requirement.specifier}"
            for v in versions or ()
            if not requirement.specifier.contains(v, prereleases=True)
        ]
    assert problems == []
    text = LOCK.read_text()
    assert text.count("--hash=sha256:") >= len(_PIN.findall(text))


def test_the_lock_holds_the_uv_that_installs_it() -> None:
    # The Makefile reads uv's version from the lock's `uv==` line.
    assert re.search(r"^uv==\d+\.\d+\.\d+ ", LOCK.read_text(), re.MULTILINE)


def test_readme_names_the_locked_versions() -> None:
    pins = _locked()
    line = next(
        (x for x in (ROOT / "README.md").read_text().splitlines() if x.startswith("Tested with")),
        "",
    )
    expected = ", ".join(
        f"{name} {' / '.join(str(v) for v in sorted(pins[name]))}" for name in KEY_PACKAGES
    )
    assert line == f"Tested with {expected} (requirements.lock)."


def test_the_formatter_decides_the_layout_everywhere() -> None:
    """The formatting policy (pyproject.toml, [tool.ruff]): no per-line opt-outs."""
    markers = ("fmt: " + "skip", "fmt: " + "off")  # split, or this file would match itself
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("study", "analysis", "trainables", "search_spaces", "bench", "tests")
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(marker in line for marker in markers)
    ]
    assert not found, f"formatter opt-outs: {found}"
