"""``apc validate SPEC``: every problem of a study spec at once, or what it would run.

It checks the spec and the files it names (data set, checkpoint, and for ``teacher.pretrained``
the ImageNet weights, whose download host it probes once when they are not cached), never the
services (the tracking store, Ray): that is `apc run`'s preflight.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from study.cli._common import EXIT_USAGE

if TYPE_CHECKING:
    from study.spec import Spec


def validate(args: argparse.Namespace) -> int:
    from study.preflight import input_problems
    from study.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
        problems = input_problems(spec)  # the files it names; services are `apc run`'s to ask
    except SpecError as error:
        problems = error.problems
    if problems:
        for problem in problems:
            print(f"{args.spec}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{args.spec}: valid study {spec.name!r}: {spec.method}, {spec.trials} trials "
        f"({len(spec.enqueue)} enqueued), objectives "
        + ", ".join(f"{m}:{d}" for m, d in spec.objectives.items())
    )
    for line in path_lines(spec, base_dir=Path(args.spec).parent):
        print(f"  {line}")
    return 0


def path_lines(spec: Spec, *, base_dir: Path) -> list[str]:
    """What ``apc validate`` says of the spec's paths: the rule, then each path as resolved."""
    from study.spec import PATH_RULE, Spec

    space = spec.search_space_ref
    defaults = Spec(name=spec.name)
    resolved: dict[str, str | None] = {
        "search_space": space if isinstance(space, str) else "(inline)",
        "dataset.root": spec.dataset.root,
        "teacher.checkpoint": spec.teacher.checkpoint,
        "storage_path": spec.storage_path,
        "tracking_uri": spec.tracking_uri,
    }
    for key, default in (
        ("storage_path", defaults.storage_path),
        ("tracking_uri", defaults.tracking_uri),
    ):
        if resolved[key] == default:  # not in the spec: MLflow and Tune take the working folder
            resolved[key] = f"{default} (default, from the working folder)"
    shown = ", ".join(f"{key}={value}" for key, value in resolved.items() if value is not None)
    return [PATH_RULE, f"this spec's folder is {base_dir.resolve()}: {shown}"]
