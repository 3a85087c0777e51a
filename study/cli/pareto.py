"""``apc pareto NAME...``: the Pareto-optimal trials of studies recorded in MLflow; also the
front ``apc run`` and ``apc resume`` print at the end (:func:`show_front`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from study.cli._common import tracking_problems, usage

if TYPE_CHECKING:
    from analysis.export import Format
    from analysis.pareto import Direction


def pareto(args: argparse.Namespace) -> int:
    from analysis.pareto import ObjectivesError, parse_objectives
    from search_spaces.space import nearest_name
    from trainables.metric_names import METRICS, valid_metrics_text

    problems: list[str] = []
    try:
        objectives = parse_objectives(args.objectives, {m: d for m, (d, _) in METRICS.items()})
    except ObjectivesError as error:
        objectives = error.parsed
        for problem in error.problems:  # "objectives.map: ..." -> "--objectives: map: ..."
            problems.append("--objectives: " + problem.removeprefix("objectives").lstrip(".: "))
    for name in objectives:
        if name not in METRICS:
            close = nearest_name(name, list(METRICS))
            hint = f"did you mean {close!r}?" if close else f"valid: {valid_metrics_text()}"
            problems.append(f"--objectives: unknown metric {name!r} ({hint})")
    out = Path(args.out) if args.out else None
    if args.format == "parquet" and out is None:
        problems.append("--format parquet: needs --out PATH (Parquet is not written to stdout)")
    if out is not None and out.is_dir():
        problems.append(f"--out: {out} is a directory")
    elif out is not None and not out.parent.is_dir():
        problems.append(f"--out: directory {out.parent} does not exist")
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
) -> int:
    """The trial runs of the studies ``names`` (those matching ``filter_string``), their Pareto
    front over ``objectives`` printed as ``fmt`` after a one-line summary, or written to
    ``out``; returns the exit code. The arguments are checked already; what the store says
    is reported as ``apc pareto: ...`` on stderr.

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
    return 0
