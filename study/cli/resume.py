"""``apc resume NAME``: finish an interrupted study without repeating its finished trials."""

from __future__ import annotations

import argparse

from study.cli._common import usage
from study.cli.run import finish


def resume(args: argparse.Namespace) -> int:
    from study.lifecycle import LifecycleError
    from study.runner import resume_study

    try:
        spec, outcome = resume_study(args.name, tracking_uri=args.tracking_uri)
    except LifecycleError as error:
        return usage("resume", error.problems)
    return finish(spec, outcome)
