from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

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


def test_an_unexpected_error_is_one_line_and_a_traceback_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import study.cli.validate

    def broken(args: object) -> int:
        raise RuntimeError("the disk went away\nsecond line")

    monkeypatch.setattr(study.cli.validate, "validate", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    try:
        assert main(["validate", "spec.yaml"]) == 1
    finally:
        tempfile.tempdir = None
    (line,) = capsys.readouterr().err.splitlines()
    (written,) = tmp_path.glob("apc-validate-*.traceback.txt")
    assert line == (
        f"apc validate: unexpected error: RuntimeError: the disk went away "
        f"(full traceback in {written})"
    )
    text = written.read_text()
    assert text.startswith("Traceback (most recent call last):")
    assert "in broken" in text
    assert "second line" in text


def test_ctrl_c_is_one_line_and_exit_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import study.cli.validate

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(study.cli.validate, "validate", interrupted)
    assert main(["validate", "spec.yaml"]) == 130
    assert capsys.readouterr().err.splitlines() == ["apc validate: interrupted"]


@pytest.mark.timeout(60)  # MLflow's own retries took minutes here, without a word
def test_pareto_probes_an_unreachable_server_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pareto", "tiny", "--tracking-uri", "http://127.0.0.1:1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "apc pareto: --tracking-uri: must be reachable, got 'http://127.0.0.1:1' ("
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("head.internal", False),
    ],
)
def test_ui_knows_loopback_addresses(host: str, loopback: bool) -> None:
    from study.cli import _is_loopback

    assert _is_loopback(host) is loopback


@pytest.mark.integration
def test_ui_on_a_public_address_warns_before_it_serves(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "study.cli",
            "ui",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert ui.stderr is not None
        first = ui.stderr.readline()
    finally:
        os.killpg(ui.pid, signal.SIGKILL)  # the UI's server children too
        ui.wait()
    assert first.startswith(
        "apc ui: warning: --host 0.0.0.0 serves the MLflow UI without authentication"
    )


def test_the_end_of_a_study_names_refused_records_and_their_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.cli import _finish
    from study.runner import StudyOutcome
    from study.spec import parse_spec

    quarantine = tmp_path / "mlflow-pending.quarantine.jsonl"
    outcome = StudyOutcome(
        "run-id",
        trials=2,
        failed=0,
        seconds=60.0,
        complete=False,
        quarantined=3,
        quarantine=quarantine,
    )
    assert _finish(parse_spec({"name": "q"}), outcome) == 1  # incomplete: no Pareto table
    err = capsys.readouterr().err.splitlines()
    assert f"apc: MLflow refused 3 records; each is kept with its reason in {quarantine}" in err
