"""``apc register NAME``: the study's Pareto-front models as versions of the registered model
``<study>-<method>`` in MLflow's model registry (:mod:`study.registry`); input checked before
anything is written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from study.cli._common import objectives_problems, tracking_problems, usage

if TYPE_CHECKING:
    from analysis.pareto import Direction
    from analysis.record import StudyRecord
    from study.registry import RegisterOutcome


def register(args: argparse.Namespace) -> int:
    import os

    # A progress bar per downloaded model is noise between the lines this prints.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    problems: list[str] = []
    objectives: Mapping[str, Direction] | None = None
    if args.objectives is not None:
        objectives, problems = objectives_problems(args.objectives)
    problems += tracking_problems(args.tracking_uri)
    if problems:
        return usage("register", problems)
    return register_study(
        args.tracking_uri, args.name, objectives=objectives, filter_string=args.filter
    )


def register_study(
    tracking_uri: str,
    name: str,
    *,
    objectives: Mapping[str, Direction] | None = None,
    filter_string: str | None = None,
    command: str = "register",
) -> int:
    """Register study ``name``'s front models and print what was done; returns the exit code
    (``command``: whose messages these are, ``register`` or ``run``)."""
    from mlflow.exceptions import MlflowException

    from analysis.record import load_study_record
    from analysis.runs import BadFilterError, RunsQueryError
    from study.registry import register_front

    try:
        record = load_study_record(name, tracking_uri=tracking_uri)
    except RunsQueryError as error:
        return usage(command, [str(error)])
    except MlflowException as error:
        return usage(command, [f"tracking URI {tracking_uri!r}: {str(error.message).strip()}"])
    if objectives is not None:
        missing = _unlogged(record, objectives)
        if missing:
            return usage(command, missing)
    try:
        outcome = register_front(
            record,
            objectives=objectives,
            filter_string=filter_string,
            progress=lambda item: print(
                f"  {item.rank:>3}  {item.trial}  run {item.run_id}: "
                + (
                    f"version {item.version}" + ("" if item.new else " (registered before)")
                    if item.version is not None
                    else f"not registered ({item.reason})"
                ),
                flush=True,
            ),
        )
    except BadFilterError as error:
        return usage(command, [f"--filter {filter_string!r}: {error.reason}"])
    except MlflowException as error:
        print(f"apc {command}: MLflow: {error.message}", file=sys.stderr)
        return 1
    _summary(outcome, name)
    return 1 if outcome.missing else 0


def _unlogged(record: StudyRecord, objectives: Mapping[str, Direction]) -> list[str]:
    from analysis.runs import metric_columns

    logged = metric_columns(record.table())
    return [
        f"--objectives: metric {m!r} was logged by no trial of study {record.name!r} "
        f"(logged: {', '.join(logged) or 'none'})"
        for m in objectives
        if m not in logged
    ]


def _summary(outcome: RegisterOutcome, name: str) -> None:
    from analysis.layout import objectives_text

    front = len(outcome.trials)
    print(
        f"registered model {outcome.name!r}: {front} front trials of study {name!r} over "
        f"{objectives_text(outcome.objectives)} (trials matching {outcome.filter_string!r}); "
        f"{outcome.created} new versions"
        + (f", {outcome.missing} without a model" if outcome.missing else "")
    )
    if front:
        version = next((t.version for t in outcome.trials if t.version is not None), None)
        if version is not None:
            print(
                "load one: import mlflow.pytorch; "
                f'model = mlflow.pytorch.load_model("models:/{outcome.name}/{version}")'
            )
