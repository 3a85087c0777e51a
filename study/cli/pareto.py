"""``apc pareto NAME...``: the Pareto-optimal trials of studies recorded in MLflow; also the
front ``apc run`` and ``apc resume`` print at the end (:func:`show_front`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from study.cli._common import objectives_problems, tracking_problems, usage

if TYPE_CHECKING:
    import pyarrow as pa

    from analysis.export import Format
    from analysis.pareto import Direction


def pareto(args: argparse.Namespace) -> int:
    objectives, problems = objectives_problems(args.objectives)
    out = Path(args.out) if args.out else None
    if args.format == "parquet" and out is None:
        problems.append("--format parquet: needs --out PATH (Parquet is not written to stdout)")
    if out is not None and out.is_dir():
        problems.append(f"--out: {out} is a directory")
    elif out is not None and not out.parent.is_dir():
        problems.append(f"--out: directory {out.parent} does not exist")
    if args.mark and len(set(args.name)) > 1:
        # The marks say "on this study's front": a front over several studies is not one.
        problems.append(f"--mark: marks the front of one study, got {len(set(args.name))} studies")
    problems += tracking_problems(args.tracking_uri)
    if problems:
        return usage("pareto", problems)
    return show_front(
        args.tracking_uri,
        args.name,
        objectives,
        filter_string=args.filter,
        fmt=args.format,
        out=out,
        mark=args.mark,
    )


def show_front(
    tracking_uri: str,
    names: Sequence[str],
    objectives: Mapping[str, Direction],
    *,
    filter_string: str | None = None,
    selected: str | None = None,
    fmt: Format = "table",
    out: Path | None = None,
    mark: bool = False,
) -> int:
    """The trial runs of the studies ``names`` (those matching ``filter_string``), their Pareto
    front over ``objectives`` printed as ``fmt`` after a one-line summary, or written to
    ``out``; returns the exit code. The arguments are checked already; what the store says
    is reported as ``apc pareto: ...`` on stderr. ``mark`` (one study): the study's trial runs
    are tagged with this front (:mod:`analysis.marks`).

    ``selected`` says in words which trials ``filter_string`` selects (``"finished"``): the
    summary then reads "Pareto front of study 'NAME': 8 of 12 finished trials, over map
    (max), ..." instead of naming a filter the user never typed (``apc run``'s end).
    """
    from mlflow.exceptions import MlflowException

    from analysis.export import ranked_front, render
    from analysis.runs import BadFilterError, RunsQueryError, load_studies, metric_columns

    try:
        trials = load_studies(tracking_uri, names, filter_string=filter_string)
    except BadFilterError as error:
        return usage("pareto", [f"--filter {filter_string!r}: {error.reason}"])
    except RunsQueryError as error:
        return usage("pareto", [str(error)])
    except MlflowException as error:
        print(f"apc pareto: MLflow: {error.message}", file=sys.stderr)
        return 1
    unique = list(dict.fromkeys(names))
    studies = (
        f"study {unique[0]!r}"
        if len(unique) == 1
        else "studies " + ", ".join(repr(n) for n in unique)
    )
    if selected is not None:
        which = f"of {studies} ({selected})"
    else:
        which = f"of {studies}" + (f" matching {filter_string!r}" if filter_string else "")
    if trials.num_rows == 0:
        print(f"apc pareto: no trial runs {which}", file=sys.stderr)
    else:
        logged = metric_columns(trials)
        unlogged = [
            f"--objectives: metric {name!r} was logged by no trial {which} "
            f"(logged: {', '.join(logged) or 'none'})"
            for name in objectives
            if name not in logged
        ]
        if unlogged:
            return usage("pareto", unlogged)
    front = ranked_front(trials, objectives)
    data = render(front, fmt, objectives)
    if selected is not None:
        summary = (
            f"Pareto front of {studies}: {front.num_rows} of {trials.num_rows} {selected} "
            "trials, over "
            + ", ".join(f"{name} ({direction})" for name, direction in objectives.items())
        )
    else:
        summary = (
            f"{front.num_rows} of {trials.num_rows} trials {which} on the Pareto front of "
            + ", ".join(f"{name}:{direction}" for name, direction in objectives.items())
        )
    if out is not None:
        try:
            out.write_bytes(data)
        except OSError as error:
            print(f"apc pareto: --out: cannot write {out}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"{summary}: wrote {out}")
    else:
        if fmt == "table":
            print(summary)
        sys.stdout.write(data.decode())
    if mark:
        message = _mark(tracking_uri, unique[0], front, objectives, filter_string)
        # Not into a CSV or JSON on stdout.
        print(message, file=sys.stdout if fmt == "table" or out is not None else sys.stderr)
    return 0


def _mark(
    tracking_uri: str,
    name: str,
    front: pa.Table,
    objectives: Mapping[str, Direction],
    filter_string: str | None,
) -> str:
    """Tag study ``name``'s trial runs with ``front`` (as printed) and describe it on the
    newest study run; returns what was done, as one line."""
    from analysis.layout import front_filter
    from analysis.marks import describe_front, front_ranks, set_marks
    from analysis.record import NoStudyRunError, load_study_record
    from analysis.runs import study_experiment, tracking_client, trial_runs

    client = tracking_client(tracking_uri)
    runs = trial_runs(client, study_experiment(client, tracking_uri, name))
    ranks = front_ranks(front)
    changed = set_marks(client, runs, ranks)
    try:
        record = load_study_record(name, tracking_uri=tracking_uri)
    except NoStudyRunError:
        where = "no study run to describe it on"
    else:
        describe_front(
            client,
            record.parent_run_id,
            study=name,
            objectives=objectives,
            filter_string=filter_string,
            by="apc pareto --mark",
        )
        where = f"described on study run {record.parent_run_id}"
    return (
        f"marked {len(ranks)} of {len(runs)} trial runs of study {name!r} as on the front "
        f"({changed} changed; {where}); the UI lists them with: {front_filter()}"
    )
