"""CPU latency and size of quantized networks against the float32 network, side by side.

Run ``python -m bench.quantized_latency [--arch vgg16_bn] [--width 1] [--image-size 112]
[--modes static_int8,dynamic_int8,fp16] [--batches 1,32] [--rounds 5] [--threads 0]``.

The float32 network (random weights, BN in eval mode) and its quantized copies made by
:func:`trainables.quantization.quantize_ptq` are timed side by side: every round runs each
model once per batch size, so drift on a shared machine hits all of them alike, and each
reports its median. int8 models run as deployed: converted by torchao's PT2E flow and lowered to
oneDNN int8 kernels (:func:`trainables.quantization.lower_for_cpu`, one lowering per batch
size); ``static_int8`` is calibrated on random images (kernel time does not depend on the
values) and stands for QAT too, whose converted graph is the same. The float32 model is timed
with its BN folded as well as unfolded (folding alone is a small speed-up, which should not be
credited to int8). ``model_bytes`` is ``torch.save`` of the state (int8 weights and their
scales for int8). One JSON line per (mode, batch), and a last summary line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench._common import emit, environment, inference_call, median, time_interleaved
from trainables.models import ARCHITECTURES, build_model
from trainables.quantization import PTQ_MODES, fold_batch_norm, lower_for_cpu, quantize_ptq
from trainables.size import state_dict_bytes

BENCH = "quantized_latency"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="vgg16_bn")
    parser.add_argument("--width", type=int, default=1, help="width divisor of the network")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--modes", default="static_int8,dynamic_int8,fp16")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]
    if not modes or any(m not in PTQ_MODES for m in modes):
        parser.error(f"--modes: must be among {list(PTQ_MODES)}, got {args.modes!r}")
    if not batches or any(b < 1 for b in batches) or args.rounds < 1:
        parser.error("--batches and --rounds must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.image_size
    dense = build_model(args.arch, num_classes=20, image_size=size, width_divisor=args.width)
    dense.eval()
    folded = fold_batch_norm(dense)
    calibration = [torch.randn(8, 3, size, size) for _ in range(2)]
    quantized = {
        mode: quantize_ptq(dense, mode, image_size=size, calibration=calibration) for mode in modes
    }
    sizes = {"fp32": state_dict_bytes(dense), "fp32_folded": state_dict_bytes(folded)}
    sizes.update({mode: state_dict_bytes(model) for mode, model in quantized.items()})
    cases: dict[str, Callable[[], object]] = {}
    for batch in batches:
        images = torch.randn(batch, 3, size, size)
        cases[f"fp32/{batch}"] = inference_call(dense, images)
        cases[f"fp32_folded/{batch}"] = inference_call(folded, images)
        for mode, model in quantized.items():
            cases[f"{mode}/{batch}"] = inference_call(lower_for_cpu(model, batch, size), images)
    times = time_interleaved(cases, rounds=args.rounds, warmup=2)
    summary: dict[str, Any] = {
        "bench": BENCH,
        "summary": True,
        "arch": args.arch,
        "width": args.width,
        "image_size": size,
        "load": os.getloadavg()[0],
        **environment("cpu"),
    }
    for batch in batches:
        base = median(times[f"fp32/{batch}"])
        for name in ["fp32", "fp32_folded", *quantized]:
            latency = median(times[f"{name}/{batch}"])
            emit(
                {
                    "bench": BENCH,
                    "arch": args.arch,
                    "mode": name,
                    "batch": batch,
                    "model_bytes": sizes[name],
                    "bytes_fraction": round(sizes[name] / sizes["fp32"], 4),
                    "latency_ms": round(latency * 1000, 3),
                    "latency_fraction": round(latency / base, 4),
                }
            )
            if name != "fp32":
                summary[f"speedup_{name}_b{batch}"] = round(base / latency, 3)
    for name in quantized:
        summary[f"size_reduction_{name}"] = round(sizes["fp32"] / sizes[name], 3)
    emit(summary)
    print("done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
