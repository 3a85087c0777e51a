"""The ``apc`` command line: one module per command, the parser and dispatch in ``_app``.

Exit codes: 0 done; 2 the user's input is wrong (one message per problem, no traceback);
1 anything else (an unexpected error prints one line and writes its traceback to a file);
130 interrupted (Ctrl-C).

Every module here imports only the standard library at its top: the heavy packages (torch,
Ray, MLflow, the analysis) are imported inside the command that needs them, so that
``apc --help`` and ``apc --version`` stay fast.
"""

from __future__ import annotations

from study.cli._app import EXIT_INTERRUPTED, _parser, main
from study.cli._common import EXIT_USAGE
from study.cli._common import tracking_problems as _tracking_problems
from study.cli.run import finish as _finish
from study.cli.ui import is_loopback as _is_loopback
from study.cli.validate import path_lines as _path_lines
from study.presets import DEMO_SPEC

# ``main`` is the console script; the rest are what tests and benchmarks import from here.
__all__ = [
    "DEMO_SPEC",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "_finish",
    "_is_loopback",
    "_parser",
    "_path_lines",
    "_tracking_problems",
    "main",
]
