"""CPU latency of structurally pruned networks against their FLOPs and parameter reduction.

Run ``python -m bench.pruned_latency [--arch vgg16_bn] [--width 1] [--image-size 112]
[--scheme paper] [--rates 0.3,0.5,0.7] [--batches 1,8] [--rounds 5]``.

The unpruned network (random weights; L1 pruning needs no training to rebuild the
architecture) and its copies pruned by :func:`trainables.structured_pruning.prune_structured`
at each rate are timed side by side: every round runs each model once per batch size, so drift
on a shared machine hits all of them alike, and each reports its median. One JSON line per
(rate, batch) with the parameter, FLOPs and latency fractions of the pruned network relative
to the unpruned one, and a last summary line. Latency usually falls less than FLOPs do: small
convolutions use the cores less well, and memory traffic and the unpruned head stay.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bench._common import emit, environment, inference_call, median, time_interleaved
from trainables.models import ARCHITECTURES, build_model
from trainables.size import count_flops, count_params
from trainables.structured_pruning import SCHEMES, prune_structured

BENCH = "pruned_latency"


def _numbers(text: str, kind: Callable[[str], Any]) -> list[Any]:
    return [kind(part) for part in text.split(",") if part]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="vgg16_bn")
    parser.add_argument("--width", type=int, default=1, help="width divisor of the network")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--scheme", choices=SCHEMES, default="paper")
    parser.add_argument("--rates", default="0.3,0.5,0.7", help="comma-separated channel rates")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    rates = _numbers(args.rates, float)
    batches = _numbers(args.batches, int)
    if not rates or any(not 0 < r < 1 for r in rates):
        parser.error(f"--rates: must be numbers in (0, 1), got {args.rates!r}")
    if not batches or any(b < 1 for b in batches) or args.rounds < 1:
        parser.error("--batches and --rounds must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = build_model(
        args.arch, num_classes=20, image_size=args.image_size, width_divisor=args.width
    ).eval()
    models: dict[float, nn.Module] = {0.0: dense}
    for rate in rates:
        pruned = prune_structured(
            dense, rate=rate, image_size=args.image_size, scheme=args.scheme
        ).model
        models[rate] = pruned.eval()
    params = {rate: count_params(m) for rate, m in models.items()}
    flops = {rate: count_flops(m, args.image_size) for rate, m in models.items()}
    cases = {}
    for batch in batches:
        images = torch.randn(batch, 3, args.image_size, args.image_size)
        for rate, model in models.items():
            cases[f"{rate}/{batch}"] = inference_call(model, images)
    times = time_interleaved(cases, rounds=args.rounds, warmup=1)
    env = environment("cpu")
    summary: dict[str, Any] = {
        "bench": BENCH,
        "summary": True,
        "arch": args.arch,
        "width": args.width,
        "image_size": args.image_size,
        "scheme": args.scheme,
        "load": os.getloadavg()[0],
        **env,
    }
    for batch in batches:
        base = median(times[f"0.0/{batch}"])
        for rate in models:
            latency = median(times[f"{rate}/{batch}"])
            record = {
                "bench": BENCH,
                "arch": args.arch,
                "scheme": args.scheme,
                "rate": rate,
                "batch": batch,
                "params": params[rate],
                "param_fraction": round(params[rate] / params[0.0], 4),
                "flops": flops[rate],
                "flops_fraction": round(flops[rate] / flops[0.0], 4),
                "latency_ms": round(latency * 1000, 3),
                "latency_fraction": round(latency / base, 4),
            }
            emit(record)
            if rate > 0:
                summary[f"speedup_r{rate}_b{batch}"] = round(base / latency, 3)
                summary[f"flops_reduction_r{rate}"] = round(flops[0.0] / flops[rate], 3)
    emit(summary)
    print("done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
