"""``apc models``: the architectures, their matched layer and the students' sizes."""

from __future__ import annotations

import argparse

from study.cli._common import usage


def models(args: argparse.Namespace) -> int:
    import torch

    from trainables.models import ARCHITECTURES, WIDTH_DIVISORS, build_model, forward_features

    problems = []
    if args.image_size < 7:
        problems.append(f"--image-size: must be an integer >= 7, got {args.image_size}")
    if args.num_classes < 1:
        problems.append(f"--num-classes: must be a positive integer, got {args.num_classes}")
    if problems:
        return usage("models", problems)
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
