"""What the commands share: the usage exit code and its messages, the tracking-URI probe,
``--objectives`` as ``apc pareto`` and ``apc register`` read it, and the last-resort report
of an unexpected error."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from analysis.pareto import Direction

#: The user's input is wrong: one message per problem, no traceback.
EXIT_USAGE = 2


def usage(command: str, problems: Iterable[str]) -> int:
    """Print each problem as ``apc COMMAND: PROBLEM`` on stderr; returns ``EXIT_USAGE``."""
    for problem in problems:
        print(f"apc {command}: {problem}", file=sys.stderr)
    return EXIT_USAGE


def tracking_problems(uri: str) -> list[str]:
    """The store behind --tracking-uri, probed for a few seconds: MLflow's client would retry
    an unreachable server for minutes without a word."""
    from study.preflight import tracking_problems

    return [p.replace("tracking_uri:", "--tracking-uri:", 1) for p in tracking_problems(uri)]


def crash(command: str, error: Exception) -> int:
    """The last resort for an error no handler expected: one line naming it, the traceback in
    a file (a wall of Ray and MLflow frames would bury the one line that matters)."""
    import tempfile
    import time
    import traceback

    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / f"apc-{command}-{stamp}-{os.getpid()}.traceback.txt"
    text = "".join(traceback.format_exception(error))
    try:
        path.write_text(text, encoding="utf-8")
        where = f"full traceback in {path}"
    except OSError as write_error:
        where = f"the traceback could not be written to {path}: {write_error.strerror}"
    message = (str(error).strip().splitlines() or [""])[0][:300]
    print(
        f"apc {command}: unexpected error: {type(error).__name__}"
        + (f": {message}" if message else "")
        + f" ({where})",
        file=sys.stderr,
    )
    return 1


def objectives_problems(text: str) -> tuple[dict[str, Direction], list[str]]:
    """``--objectives`` parsed as ``apc pareto`` parses it, and its problems (one line each)."""
    from analysis.pareto import ObjectivesError, parse_objectives
    from search_spaces.space import nearest_name
    from trainables.metric_names import METRICS, valid_metrics_text

    problems: list[str] = []
    try:
        objectives = parse_objectives(text, {m: d for m, (d, _) in METRICS.items()})
    except ObjectivesError as error:
        objectives = error.parsed
        for problem in error.problems:
            problems.append("--objectives: " + problem.removeprefix("objectives").lstrip(".: "))
    for name in objectives:
        if name not in METRICS:
            close = nearest_name(name, list(METRICS))
            hint = f"did you mean {close!r}?" if close else f"valid: {valid_metrics_text()}"
            problems.append(f"--objectives: unknown metric {name!r} ({hint})")
    return objectives, problems
