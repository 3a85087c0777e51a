from __future__ import annotations

import subprocess
import sys

import pytest

from study.cli import main
from trainables import __version__


def test_models_lists_every_architecture_with_its_matched_layer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "--image-size", "64", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "vgg16_bn   features" in out
    assert "resnet50   layer4" in out
    assert out.count("8x8") == 5


def test_bad_input_gives_one_message_per_problem_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "--image-size", "3", "--num-classes", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "apc models: --image-size: must be an integer >= 7, got 3",
        "apc models: --num-classes: must be a positive integer, got 0",
    ]


def test_console_script_reports_version_and_usage_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "study.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"apc {__version__}"
    wrong = subprocess.run(
        [sys.executable, "-m", "study.cli", "frobnicate"], capture_output=True, text=True
    )
    assert wrong.returncode == 2
    assert "invalid choice: 'frobnicate'" in wrong.stderr
    assert "Traceback" not in wrong.stderr
