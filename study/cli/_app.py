"""The ``apc`` parser and dispatch: each command's handler lives in its own module and imports
what it needs when it runs; exit codes as in the package's docstring."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from study.cli import models, pareto, register, report, resume, run, ui, validate
from study.cli._common import crash
from trainables._version import __version__

#: The shell's convention for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    """The whole command line; each handler is looked up in its module when this is built."""
    parser = argparse.ArgumentParser(
        prog="apc", description="Attribution-preserving network compression studies."
    )
    parser.add_argument("--version", action="version", version=f"apc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = commands.add_parser(
        "models", help="list architectures, their matched layer and student sizes"
    )
    command.add_argument("--image-size", type=int, default=224)
    command.add_argument("--num-classes", type=int, default=20)
    command.set_defaults(handler=models.models)
    command = commands.add_parser(
        "validate", help="check a study spec and report every problem at once (exit 2 if any)"
    )
    command.add_argument("spec", metavar="SPEC", help="path of the study's YAML spec")
    command.set_defaults(handler=validate.validate)
    command = commands.add_parser(
        "pareto", help="print the Pareto-optimal trials of a study recorded in MLflow"
    )
    command.add_argument(
        "name",
        metavar="NAME",
        nargs="+",
        help="the study's name (its MLflow experiment); several: one front over their trials, "
        "e.g. of different compression methods",
    )
    command.add_argument(
        "--objectives",
        # analysis.layout.DEFAULT_OBJECTIVES spelled out: importing the analysis here would slow
        # every command down (tests/analysis/test_layout.py checks that the two agree).
        default="map:max,attr_auc:max,params:min",
        help="comma-separated METRIC:min|max (a bare METRIC takes its usual direction); "
        "default: %(default)s",
    )
    command.add_argument(
        "--filter",
        metavar="EXPR",
        help="MLflow search expression the trials must match, e.g. \"params.matching = 'swa'\" "
        "or 'metrics.map > 50 AND attributes.status = \"FINISHED\"' (no OR, no parentheses)",
    )
    command.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    command.add_argument("--out", metavar="PATH", help="write to PATH instead of stdout")
    command.add_argument(
        "--mark",
        action="store_true",
        help="tag the study's trial runs on or off this front (with their rank on it) so the "
        "MLflow UI can list it, and say so in the study run's description; one NAME only",
    )
    command.add_argument("--tracking-uri", default="sqlite:///mlflow.db", metavar="URI")
    command.set_defaults(handler=pareto.pareto)
    command = commands.add_parser(
        "report",
        help="the paper's table and plots of a study, logged to its MLflow study run",
    )
    command.add_argument("name", metavar="NAME", help="the study's name (its MLflow experiment)")
    command.add_argument("--tracking-uri", default="sqlite:///mlflow.db", metavar="URI")
    command.add_argument(
        "--out", metavar="DIR", help="also write the report's files to DIR (created if needed)"
    )
    command.set_defaults(handler=report.report)
    command = commands.add_parser(
        "register",
        help="register the study's Pareto-front models in MLflow's model registry",
    )
    command.add_argument("name", metavar="NAME", help="the study's name (its MLflow experiment)")
    command.add_argument(
        "--objectives",
        metavar="LIST",
        help="comma-separated METRIC:min|max (a bare METRIC takes its usual direction); "
        "default: the study's",
    )
    command.add_argument(
        "--filter",
        metavar="EXPR",
        help="MLflow search expression the trials must match (as apc pareto's); default: the "
        "FINISHED trials of the newest study run",
    )
    command.add_argument("--tracking-uri", default="sqlite:///mlflow.db", metavar="URI")
    command.set_defaults(handler=register.register)
    command = commands.add_parser(
        "run", help="run a study (the embedded demo when SPEC is omitted)"
    )
    command.add_argument("spec", metavar="SPEC", nargs="?", help="study spec (default: the demo)")
    command.add_argument("--name", help="study name (overrides the spec's)")
    command.add_argument("--trials", type=int, help="number of trials")
    command.add_argument("--ray-address", help="address of a running Ray cluster")
    command.add_argument("--tracking-uri", help="MLflow tracking URI")
    command.add_argument("--storage", help="Ray Tune storage path")
    command.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. --set dataset.image_size=64 (repeatable)",
    )
    command.set_defaults(handler=run.run)
    command = commands.add_parser(
        "resume", help="finish an interrupted study without repeating its finished trials"
    )
    command.add_argument("name", metavar="NAME", help="the study's name (its MLflow experiment)")
    command.add_argument("--tracking-uri", default="sqlite:///mlflow.db", metavar="URI")
    command.set_defaults(handler=resume.resume)
    command = commands.add_parser("ui", help="the MLflow UI over the study store (127.0.0.1)")
    command.add_argument(
        "name",
        metavar="NAME",
        nargs="*",
        help="the studies to link to (default: every study in the store)",
    )
    command.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    command.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    command.add_argument("--port", type=int, default=5000)
    command.set_defaults(handler=ui.ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``apc`` command line; returns the exit code (see the package's docstring)."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print(f"apc {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        return crash(args.command, error)
    return code
