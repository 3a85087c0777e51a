"""Throughput of the batched evaluation against the official code's one-image-at-a-time loop.

    python -m bench.eval_throughput [--images 1449] [--image-size 112] [--batch-size 64]
                                    [--device cpu|cuda] [--threads 2] [--repeats 3]

Data: ``--images`` samples of the generated ``shapes`` data set's ``seg_val`` split (masks
included), built as :func:`trainables.trial.build_split` builds it (``build_dataset("shapes",
split=..., size=..., image_size=..., seed=...)``); 1449 is the size of VOC2012's segmentation
val set. They are generated once, before any timing, and held on ``--device`` for both sides.
Networks: a VGG11_bn/8 student and a VGG11_bn/4 teacher from
:func:`trainables.models.build_model`, random weights (seeded), so that about half the
ground-truth classes are predicted (sigmoid >= 0.5) and the pair count is large.

In one process, interleaved over ``--repeats`` rounds (median reported), it times:

* ``apc_evaluate``: :func:`trainables.evaluation.evaluate` with the teacher, batches of
  ``--batch-size``: task metrics (mAP, ...), Grad-CAM of every correctly predicted (image,
  ground-truth class) pair from one head-only backward per batch, ``attr_auc``/``point_acc``
  with the batched :func:`trainables.metrics.roc_auc`/``pointing_game``, ``attr_cos``/``attr_l2``
  against the teacher's maps.
* ``official_loop``: the official evaluation's way (docs/method.md#known-faults): batch 1, both
  networks in eval mode, one forward per image and network with autograd, then for each pair
  one full ``.backward()`` of the student's and of the teacher's class logit (parameter
  gradients included) with the matched layer's gradient read from ``retain_grad``, Grad-CAM
  ReLU(sum_c mean_hw(grad_c) A_c), bilinear upsampling to the image, then on the host
  ``sklearn.metrics.roc_auc_score`` per pair, a numpy arg-max pointing check, numpy cosine/L2
  against the teacher's map, and ``sklearn.metrics.average_precision_score`` per class for mAP.
  It follows ``evaluate``'s documented protocol: a pair is a ground-truth class with sigmoid
  probability >= 0.5; AUC skips masks without a positive or a negative pixel, pointing skips
  empty masks; cosine/L2 are over all pairs on the upsampled maps, with ``evaluate``'s eps.

Both must give the same numbers. The summary holds, for the timed float32 runs over the whole
set, the largest difference of each set metric (``attr_auc``, ``point_acc``, ``map`` in %,
``attr_cos``, ``attr_l2`` raw) and of the per-image means, and the pair counts; float32 rounds
a batch of 64 and a batch of 1 differently, so these are small but not zero (``float32.agree``:
within 1e-6 on the [0, 1] scale, the same pairs). Then, untimed, both run once more in float64
on the first ``--check-images`` images, where rounding is gone and they must agree to 1e-9
(set metrics and per-image means) with the same pairs: that check is the exit status (1 if
they differ). TF32 is switched off on CUDA so both sides compute in full float32 (TF32 would
make the two differ by ~1e-3).
The speedup is the median official round over the median apc round; the target is 5x on the
CPU (2 threads) and 50x on a GPU.

Cost of ``--images 1449`` on 2 idle CPU threads: about 6 minutes (3 rounds of ~100 s for the
loop and ~7 s for ``evaluate``, ~40 s for the float64 check); more on a loaded machine.
``evaluate`` is bound by the two networks' forward passes here (Grad-CAM and the metrics take
under a tenth of it), so the ratio is about what batch 1, a full backward per pair and sklearn
cost over batched forwards.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor, nn

from bench._common import emit, environment, median, time_interleaved
from trainables.data import build_dataset
from trainables.evaluation import Evaluation, evaluate
from trainables.metric_names import ATTRIBUTION_METHOD_NAMES
from trainables.models import build_model, matched_layer

BENCH = "eval_throughput"
TARGET_SPEEDUP = {"cpu": 5.0, "cuda": 50.0}
# float32: 1e-6 on the [0, 1] scale (1e-4 for the metrics in %); float64: the protocol check.
FLOAT32_TOLERANCE = {
    "attr_auc": 1e-4,
    "point_acc": 1e-4,
    "map": 1e-4,
    "attr_cos": 1e-6,
    "attr_l2": 1e-6,
}
FLOAT64_TOLERANCE = dict.fromkeys(FLOAT32_TOLERANCE, 1e-9)
THRESHOLD = 0.5
# evaluate's eps (trainables.metrics.map_cosine / map_l2).
COSINE_EPS = 1e-8
NORMALIZE_EPS = 1e-12
METRICS = ("attr_auc", "point_acc", "attr_cos", "attr_l2", "map")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EvalSet:
    """The evaluation set on the device: images [N, 3, S, S], labels [N, C], masks [N, C, S, S]."""

    images: Tensor
    labels: Tensor
    masks: Tensor
    index: Tensor

    def head(self, n: int) -> EvalSet:
        """The first ``n`` images."""
        return EvalSet(self.images[:n], self.labels[:n], self.masks[:n], self.index[:n])

    def batches(self, batch_size: int) -> list[dict[str, Tensor]]:
        """Batches as the default collate builds them from the data set's samples."""
        return [
            {
                "image": self.images[i : i + batch_size],
                "labels": self.labels[i : i + batch_size],
                "masks": self.masks[i : i + batch_size],
                "index": self.index[i : i + batch_size],
            }
            for i in range(0, self.images.shape[0], batch_size)
        ]


@dataclass
class LoopResult:
    """What the official-style loop measured: set metrics and per-image means (NaN if none)."""

    metrics: dict[str, float]
    num_pairs: npt.NDArray[np.int64]
    zero_student_maps: int  # pairs whose student map is all zero (~1 in 5 here)
    per_image: dict[str, FloatArray]


def make_eval_set(images: int, image_size: int, seed: int, device: torch.device) -> EvalSet:
    dataset = build_dataset(
        "shapes", split="seg_val", size=images, image_size=image_size, seed=seed
    )
    samples = [dataset[i] for i in range(len(dataset))]
    return EvalSet(
        images=torch.stack([s["image"] for s in samples]).to(device),
        labels=torch.stack([s["labels"] for s in samples]).to(device),
        masks=torch.stack([s["masks"] for s in samples]).to(device),
        index=torch.as_tensor([s["index"] for s in samples], dtype=torch.int64),
    )


def _forward_keeping(model: nn.Module, image: Tensor) -> tuple[Tensor, Tensor]:
    """Logits [1, K] with autograd, and the matched layer's output with ``retain_grad``."""
    saved: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
        output.retain_grad()
        saved.append(output)

    handle = matched_layer(model).register_forward_hook(keep)
    try:
        logits = model(image)
    finally:
        handle.remove()
    return logits, saved[0]


def _grad_cam_one(
    model: nn.Module, logits: Tensor, activations: Tensor, cls: int, size: tuple[int, int]
) -> FloatArray:
    """Grad-CAM of class ``cls`` for the one image, upsampled: float32 numpy [H * W]."""
    model.zero_grad(set_to_none=True)
    activations.grad = None
    logits[0, cls].backward(retain_graph=True)
    assert activations.grad is not None
    weights = activations.grad.mean(dim=(2, 3))  # [1, C]
    cam = F.relu(torch.einsum("bc,bchw->bhw", weights, activations.detach()))  # [1, h, w]
    up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)
    out: FloatArray = up.reshape(-1).cpu().numpy()
    return out


def _cosine(a: FloatArray, b: FloatArray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denominator = max(float(np.linalg.norm(a64)), COSINE_EPS) * max(
        float(np.linalg.norm(b64)), COSINE_EPS
    )
    return float(np.dot(a64, b64)) / denominator


def _l2(a: FloatArray, b: FloatArray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    a_unit = a64 / max(float(np.linalg.norm(a64)), NORMALIZE_EPS)
    b_unit = b64 / max(float(np.linalg.norm(b64)), NORMALIZE_EPS)
    return float(np.linalg.norm(a_unit - b_unit))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def official_loop(student: nn.Module, teacher: nn.Module, data: EvalSet) -> LoopResult:
    """One image at a time, one full backward per (image, class) pair and network, sklearn."""
    student.eval()
    teacher.eval()
    n, num_classes = data.labels.shape
    size = (data.images.shape[-2], data.images.shape[-1])
    all_logits = np.zeros((n, num_classes), dtype=np.float32)
    labels_np = data.labels.cpu().numpy() > 0.5
    per_pair: dict[str, list[float]] = {name: [] for name in ("auc", "hit", "cos", "l2")}
    per_image = {name: np.full(n, math.nan) for name in ("auc", "hit", "cos", "l2")}
    num_pairs = np.zeros(n, dtype=np.int64)
    zero_maps = 0
    for i in range(n):
        image = data.images[i : i + 1]
        s_logits, s_act = _forward_keeping(student, image)
        t_logits, t_act = _forward_keeping(teacher, image)
        all_logits[i] = s_logits.detach()[0].cpu().numpy()
        # In float32 as evaluate does: sigmoid(x) rounds to 0.5 for tiny negative x.
        predicted = (torch.sigmoid(s_logits.detach()[0]) >= THRESHOLD).cpu().numpy()
        mine: dict[str, list[float]] = {name: [] for name in per_pair}
        for cls in range(num_classes):
            if not (labels_np[i, cls] and predicted[cls]):
                continue
            num_pairs[i] += 1
            s_map = _grad_cam_one(student, s_logits, s_act, cls, size)
            zero_maps += int(not s_map.any())
            t_map = _grad_cam_one(teacher, t_logits, t_act, cls, size)
            mask = data.masks[i, cls].cpu().numpy().reshape(-1)
            if mask.any() and not mask.all():
                mine["auc"].append(float(roc_auc_score(mask, s_map)))
            if mask.any():
                mine["hit"].append(float(mask[int(np.argmax(s_map))]))
            mine["cos"].append(_cosine(t_map, s_map))
            mine["l2"].append(_l2(t_map, s_map))
        for name, values in mine.items():
            per_pair[name].extend(values)
            per_image[name][i] = _mean(values)
    student.zero_grad(set_to_none=True)
    teacher.zero_grad(set_to_none=True)
    aps = [
        float(average_precision_score(labels_np[:, c], all_logits[:, c]))
        for c in range(num_classes)
        if labels_np[:, c].any()
    ]
    metrics = {
        "attr_auc": 100.0 * _mean(per_pair["auc"]),
        "point_acc": 100.0 * _mean(per_pair["hit"]),
        "attr_cos": _mean(per_pair["cos"]),
        "attr_l2": _mean(per_pair["l2"]),
        "map": 100.0 * _mean(aps),
    }
    return LoopResult(
        metrics=metrics,
        num_pairs=num_pairs,
        zero_student_maps=zero_maps,
        per_image={
            "attr_auc": 100.0 * per_image["auc"],
            "point_acc": 100.0 * per_image["hit"],
            "attr_cos": per_image["cos"],
            "attr_l2": per_image["l2"],
        },
    )


def _abs_diff(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b)


def compare(
    ours: Evaluation,
    loop: LoopResult,
    tolerance: Mapping[str, float],
    *,
    per_image: bool = False,
) -> dict[str, Any]:
    """Largest differences between the two, per set metric and per image, and the pairs.

    ``agree``: the same pairs per image, NaN at the same images, and every set metric (with
    ``per_image`` also every per-image mean) within its ``tolerance`` (in the metric's units,
    % for attr_auc, point_acc and map).
    """
    metric_diff = {name: _abs_diff(ours.metrics[name], loop.metrics[name]) for name in METRICS}
    image_diff: dict[str, float] = {}
    nan_equal = True
    for name, reference in loop.per_image.items():
        mine = np.asarray(ours.per_sample[name], dtype=np.float64)
        nan_equal &= bool(np.array_equal(np.isnan(mine), np.isnan(reference)))
        both = ~np.isnan(mine) & ~np.isnan(reference)
        image_diff[name] = float(np.abs(mine[both] - reference[both]).max()) if both.any() else 0.0
    pairs_equal = bool(np.array_equal(ours.per_sample["num_pairs"], loop.num_pairs))
    agree = (
        pairs_equal
        and nan_equal
        and all(metric_diff[name] <= tolerance[name] for name in METRICS)
        and not any(math.isnan(value) for value in metric_diff.values())
        and (not per_image or all(image_diff[name] <= tolerance[name] for name in image_diff))
    )
    return {
        "max_abs_diff": metric_diff,
        "max_abs_diff_per_image": image_diff,
        "pairs_equal": pairs_equal,
        "per_image_nan_equal": nan_equal,
        "agree": agree,
    }


def check_float64(
    student: nn.Module, teacher: nn.Module, data: EvalSet, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """Both evaluations once more (untimed) on float64 copies of the networks and images.

    Rounding aside, the two must agree exactly: in float32 a batch of 64 and a batch of 1 round
    convolutions and matrix products differently, which moves near-tied map pixels across each
    other (ROC-AUC) and, with random weights, near-cancelling Grad-CAM sums by much more than
    1e-7 relative. float64 shrinks that below 1e-12, so what is left is the protocol.
    """
    student64 = copy.deepcopy(student).double()
    teacher64 = copy.deepcopy(teacher).double()
    data64 = EvalSet(data.images.double(), data.labels, data.masks, data.index)
    ours = evaluate(
        student64, data64.batches(batch_size), teacher=teacher64, multi_label=True, device=device
    )
    loop = official_loop(student64, teacher64, data64)
    return {
        "images": data.images.shape[0],
        **compare(ours, loop, FLOAT64_TOLERANCE, per_image=True),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=1449, help="VOC2012 seg val: 1449")
    parser.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluate's batch size")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: default)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument(
        "--check-images",
        type=int,
        default=256,
        help="images of the untimed float64 protocol check (0: none, then the float32 "
        "comparison decides the exit status)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        nargs="*",
        default=list(ATTRIBUTION_METHOD_NAMES[1:]),
        choices=list(ATTRIBUTION_METHOD_NAMES[1:]),
        help="further attribution methods whose cost per pair is measured (none: skip)",
    )
    parser.add_argument(
        "--method-images", type=int, default=64, help="images of each further method's timing"
    )
    args = parser.parse_args(argv)
    if min(args.images, args.batch_size, args.repeats) < 1 or args.image_size < 32:
        parser.error("--images, --batch-size and --repeats must be >= 1, --image-size >= 32")
    if args.check_images < 0:
        parser.error("--check-images must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    torch.manual_seed(args.seed)
    data = make_eval_set(args.images, args.image_size, args.seed, device)
    num_classes = data.labels.shape[1]
    student = build_model(
        "vgg11_bn", num_classes=num_classes, image_size=args.image_size, width_divisor=8
    ).to(device)
    teacher = build_model(
        "vgg11_bn", num_classes=num_classes, image_size=args.image_size, width_divisor=4
    ).to(device)
    batches = data.batches(args.batch_size)

    outputs: dict[str, Any] = {}

    def run_apc() -> None:
        outputs["apc_evaluate"] = evaluate(
            student, batches, teacher=teacher, multi_label=True, device=device
        )

    def run_official() -> None:
        outputs["official_loop"] = official_loop(student, teacher, data)

    # Warm-up on a slice (allocator, kernels); the timed rounds are the ones compared.
    evaluate(student, batches[:1], teacher=teacher, device=device)
    official_loop(student, teacher, data.head(4))
    load_before = os.getloadavg()[0]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = time_interleaved(
        {"apc_evaluate": run_apc, "official_loop": run_official},
        rounds=args.repeats,
        warmup=0,
        synchronize=sync,
    )
    load_after = os.getloadavg()[0]

    ours: Evaluation = outputs["apc_evaluate"]
    loop: LoopResult = outputs["official_loop"]
    env = environment(str(device))
    pairs = {
        "apc_evaluate": int(ours.per_sample["num_pairs"].sum()),
        "official_loop": int(loop.num_pairs.sum()),
    }
    metrics = {"apc_evaluate": ours.metrics, "official_loop": loop.metrics}
    seconds = {name: median(values) for name, values in times.items()}
    for name, value in seconds.items():
        emit(
            {
                "bench": BENCH,
                "impl": name,
                "seconds": round(value, 4),
                "ms_per_image": round(1e3 * value / args.images, 4),
                "runs": [round(t, 4) for t in times[name]],
                "images": args.images,
                "image_size": args.image_size,
                "batch_size": args.batch_size if name == "apc_evaluate" else 1,
                "pairs": pairs[name],
                "metrics": {k: round(metrics[name][k], 6) for k in METRICS},
                **env,
            }
        )
    check = compare(ours, loop, FLOAT32_TOLERANCE)
    float64 = None
    if args.check_images > 0:
        print("float64 protocol check ...", file=sys.stderr, flush=True)
        float64 = check_float64(
            student, teacher, data.head(args.check_images), args.batch_size, device
        )
    agree = bool(float64["agree"] if float64 is not None else check["agree"])
    speedup = seconds["official_loop"] / seconds["apc_evaluate"]
    target = TARGET_SPEEDUP[device.type]
    emit(
        {
            "bench": BENCH,
            "summary": True,
            "speedup": round(speedup, 3),
            # Best round against best round: the intrinsic ratio when other processes load
            # some rounds (they slow multi-threaded torch more than the 1-thread host loop).
            "speedup_best": round(min(times["official_loop"]) / min(times["apc_evaluate"]), 3),
            "loadavg_1m_before_after": [round(load_before, 2), round(load_after, 2)],
            "pairs": pairs["apc_evaluate"],
            "ground_truth_pairs": int((data.labels > 0.5).sum()),
            "zero_student_maps": loop.zero_student_maps,
            # The timed float32 runs over the whole set.
            "float32": {**check, "tolerance": FLOAT32_TOLERANCE},
            # The untimed float64 runs over the first --check-images images (None: skipped).
            "float64": None if float64 is None else {**float64, "tolerance": 1e-9},
            "agree": agree,
            "student": "vgg11_bn/8",
            "teacher": "vgg11_bn/4",
            "target_speedup": target,
            "meets_target": bool(agree and speedup >= target),
            **env,
        }
    )
    method_costs(
        student,
        teacher,
        data.head(min(args.method_images, args.images)),
        args.methods,
        batch_size=args.batch_size,
        device=device,
        env=env,
    )
    return 0 if agree else 1


def method_costs(
    student: nn.Module,
    teacher: nn.Module,
    data: EvalSet,
    methods: Sequence[str],
    *,
    batch_size: int,
    device: torch.device,
    env: Mapping[str, Any],
) -> None:
    """What each further attribution method adds to ``evaluate`` (one run each, untimed
    against anything else): the whole evaluation with that method only, minus Grad-CAM's."""
    batches = data.batches(batch_size)

    def timed(chosen: tuple[str, ...]) -> tuple[float, Evaluation]:
        started = time.perf_counter()
        result = evaluate(
            student, batches, teacher=teacher, device=device, attribution_methods=chosen
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started, result

    base_seconds, base = timed(("grad_cam",))
    pairs = int(base.per_sample["num_pairs"].sum())
    for method in methods:
        print(f"attribution method {method} ...", file=sys.stderr, flush=True)
        seconds, _ = timed((method,))
        emit(
            {
                "bench": BENCH,
                "case": "further_method",
                "method": method,
                "images": data.labels.shape[0],
                "pairs": pairs,
                "seconds": round(seconds, 3),
                "grad_cam_seconds": round(base_seconds, 3),
                "ms_per_pair": round(1e3 * seconds / max(pairs, 1), 3),
                "ratio_to_grad_cam": round(seconds / base_seconds, 2),
                **env,
            }
        )


if __name__ == "__main__":
    sys.exit(main())
