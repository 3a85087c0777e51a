"""YAML read within bounds: aliases cannot multiply a small file, nesting and numbers are
bounded, and each refusal is one message that says where."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from search_spaces.bounded_yaml import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    BoundedYamlError,
    load_bounded_yaml,
    read_bounded_yaml,
)


def _bomb(depth: int, width: int = 9) -> str:
    """About 1 KB whose aliases expand to width ** depth values."""
    lines = [f"a0: &a0 [{', '.join(['1'] * width)}]"]
    for level in range(1, depth + 1):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    text = _bomb(9)  # 9 ** 9 = 387 million values in 400 bytes
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(BoundedYamlError) as caught:
        load_bounded_yaml(text)
    seconds = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(caught.value).startswith(
        f"must hold at most {MAX_YAML_VALUES} values with its aliases (*name) expanded, got more "
        "at line "
    )
    assert seconds < 1.0
    assert peak < 5_000_000


def test_anchors_aliases_and_merge_keys_within_bounds_work() -> None:
    data = load_bounded_yaml(
        "base: &base {lr: 0.1, epochs: 2}\n"
        "run: {<<: *base, epochs: 3}\n"
        "copy: *base\n" + _bomb(4)  # 9 ** 5 = 59049 values expanded: within bounds
    )
    assert isinstance(data, dict)
    assert data["run"] == {"lr": 0.1, "epochs": 3}
    assert data["copy"] == {"lr": 0.1, "epochs": 2}
    assert data["a4"][8][8][8][8] == [1] * 9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: &a [*a]\n",
            "must not hold a value that contains itself, got an alias to its own "
            "anchor at line 1, column 4",
        ),
        (
            "a: " + "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1) + "\n",
            f"must nest lists and mappings at most {MAX_YAML_DEPTH} levels deep, got deeper at line 1",
        ),
        (
            "[" * 5000 + "]" * 5000,
            f"must nest lists and mappings at most {MAX_YAML_DEPTH} levels deep, got deeper",
        ),  # PyYAML itself would die of recursion
        (
            "seed: " + "9" * 5000 + "\n",
            "must write each number in at most 100 characters, got one of 5000 at line 1, column 7",
        ),  # int() refuses over 4300 digits
        ("seed: " + "9" * 4400 + ":10\n", "must write each number in at most 100 characters"),
        (
            "day: 2026-13-45\n",
            "is not valid YAML: a value its type refuses (month must be in 1..12)",
        ),
        (
            "name: a\x00b\n",
            "is not valid YAML at line 1, column 8: found character U+0000, which "
            "YAML does not allow",
        ),
        (
            "epochs: 2\ntrials: 1\nepochs: 30\n",
            "is not valid YAML at line 3, column 1: found "
            "duplicate key 'epochs' (YAML would keep only the last value; the first is at line 1, "
            "column 1)",
        ),
    ],
    ids=[
        "self-reference",
        "too-deep",
        "deeper-than-pyyaml",
        "long-int",
        "sexagesimal",
        "bad-date",
        "nul",
        "duplicate-key",
    ],
)
def test_out_of_bounds_yaml_is_one_message(text: str, expected: str) -> None:
    with pytest.raises(BoundedYamlError) as caught:
        load_bounded_yaml(text)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_a_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    file = tmp_path / "spec.yaml"
    file.write_text("name: x\n" + "#" * MAX_YAML_BYTES)
    with pytest.raises(BoundedYamlError, match=r"must be at most 1048576 bytes \(1 MiB\) of YAML"):
        read_bounded_yaml(file)
    file.write_text("name: x\n")
    assert read_bounded_yaml(file) == ("name: x\n", {"name": "x"})
