"""The ``apc`` command line.

Exit codes: 0 done; 2 the user's input is wrong (one message per problem, no traceback);
1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trainables._version import __version__

__all__ = ["main"]

EXIT_USAGE = 2


def _models(args: argparse.Namespace) -> int:
    import torch

    from trainables.models import ARCHITECTURES, WIDTH_DIVISORS, build_model, forward_features

    problems = []
    if args.image_size < 7:
        problems.append(f"--image-size: must be an integer >= 7, got {args.image_size}")
    if args.num_classes < 1:
        problems.append(f"--num-classes: must be a positive integer, got {args.num_classes}")
    if problems:
        for problem in problems:
            print(f"apc models: {problem}", file=sys.stderr)
        return EXIT_USAGE
    header = f"{'arch':<10} {'matched layer':<14} {'map':>7}  " + "  ".join(
        f"{'/' + str(d) + ' params':>11}" for d in WIDTH_DIVISORS
    )
    print(header)
    probe = torch.zeros(1, 3, args.image_size, args.image_size)
    for name, spec in ARCHITECTURES.items():
        counts = []
        side = ""
        for divisor in WIDTH_DIVISORS:
            model = build_model(
                name,
                num_classes=args.num_classes,
                image_size=args.image_size,
                width_divisor=divisor,
            ).eval()
            counts.append(f"{sum(p.numel() for p in model.parameters()) / 1e6:>10.2f}M")
            if divisor == 1:
                with torch.no_grad():
                    h, w = forward_features(model, probe).shape[-2:]
                side = f"{h}x{w}"
        print(f"{name:<10} {spec.matched_layer:<14} {side:>7}  " + "  ".join(counts))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from study.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        for problem in error.problems:
            print(f"{args.spec}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{args.spec}: valid study {spec.name!r}: {spec.method}, {spec.trials} trials "
        f"({len(spec.enqueue)} enqueued), objectives "
        + ", ".join(f"{m}:{d}" for m, d in spec.objectives.items())
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apc", description="Attribution-preserving network compression studies."
    )
    parser.add_argument("--version", action="version", version=f"apc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = commands.add_parser(
        "models", help="list architectures, their matched layer and student sizes"
    )
    models.add_argument("--image-size", type=int, default=224)
    models.add_argument("--num-classes", type=int, default=20)
    models.set_defaults(handler=_models)
    validate = commands.add_parser(
        "validate", help="check a study spec and report every problem at once (exit 2 if any)"
    )
    validate.add_argument("spec", metavar="SPEC", help="path of the study's YAML spec")
    validate.set_defaults(handler=_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``apc`` command line; returns the exit code."""
    args = _parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
