"""What the commands share: the usage exit code and its messages, the tracking-URI probe, and
the last-resort report of an unexpected error."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

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
