"""Size metrics of a compressed network, measured on the worker that trains it.

Every trainable reports the same canonical keys (:mod:`trainables.metric_names`) through
``CompressionHooks.size_metrics``:

* ``params``: parameter count; ``nonzero_params``: parameters that are not exactly zero (what
  unstructured pruning shrinks); ``param_fraction``: non-zero parameters over the teacher's
  parameters, when the teacher's count is known;
* ``model_bytes``: bytes of the serialized state dict (``torch.save``), buffers included;
  ``model_bytes_sparse`` (optional): the same with every weight that is at least half zeros
  stored as CSR with int32 indices, which is what unstructured sparsity buys on disk;
* ``flops``: floating-point operations of one forward pass at batch 1, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, 2 per multiply-add;
  dense kernels, so zeros still count);
* ``latency_ms``: median CPU wall time of one forward pass at batch 1 (a few repeats, so cheap
  enough for every epoch); ``latency_ms_b32`` (optional, the final epoch only): at batch 32.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "SizeProbe",
    "count_flops",
    "count_nonzero_params",
    "count_params",
    "cpu_latency_ms",
    "median_latency_ms",
    "size_metrics",
    "sparse_state_dict_bytes",
    "state_dict_bytes",
]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Number of parameter elements that are not exactly zero."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``, buffers included."""
    buffer = io.BytesIO()
    torch.save(_cpu_state(model), buffer)
    return buffer.getbuffer().nbytes


def _sparse_if_smaller(tensor: Tensor) -> Tensor:
    # CSR of the [out, rest] view costs 8 bytes per non-zero (value + int32 column) plus the
    # row pointers, against 4 per element dense: it pays only past half zeros.
    if not tensor.is_floating_point() or tensor.dim() < 2:
        return tensor
    matrix = tensor.reshape(tensor.shape[0], -1)
    if int(torch.count_nonzero(matrix)) * 2 > matrix.numel():
        return tensor
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        csr = matrix.to_sparse_csr()
    return torch.sparse_csr_tensor(
        csr.crow_indices().to(torch.int32),
        csr.col_indices().to(torch.int32),
        csr.values(),
        size=matrix.shape,
        check_invariants=False,
    )


def sparse_state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the state dict saved with every weight that is at least half zeros as CSR.

    Each such weight [out, ...] is stored as its [out, rest] matrix in CSR form with int32
    indices; ``tensor.to_dense().reshape(shape)`` restores it.
    """
    buffer = io.BytesIO()
    torch.save({k: _sparse_if_smaller(v) for k, v in _cpu_state(model).items()}, buffer)
    return buffer.getbuffer().nbytes


def _probe_input(image_size: int, batch: int) -> Tensor:
    return torch.zeros(batch, 3, image_size, image_size)


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    # A copy: measuring must not move the trained model off its device or change its mode.
    return copy.deepcopy(model).cpu().eval()


def count_flops(model: nn.Module, image_size: int, *, batch: int = 1) -> int:
    """Floating-point operations of one forward pass of ``batch`` images [batch, 3, S, S]."""
    probe = _cpu_eval_copy(model)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(_probe_input(image_size, batch))
    return int(counter.get_total_flops())


def median_latency_ms(model: nn.Module, images: Tensor, *, repeats: int, warmup: int) -> float:
    """Median milliseconds of ``model(images)`` over ``repeats`` timed runs after ``warmup``
    untimed ones, under ``inference_mode``; ``model`` is run as given (no copy)."""
    times = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            start = time.perf_counter()
            model(images)
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def cpu_latency_ms(
    model: nn.Module, image_size: int, *, batch: int = 1, repeats: int = 5, warmup: int = 1
) -> float:
    """Median CPU milliseconds of one eval-mode forward pass of ``batch`` images.

    Runs on the calling process's torch threads (a trial's CPU share), on a CPU copy.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats: must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    return median_latency_ms(
        _cpu_eval_copy(model), _probe_input(image_size, batch), repeats=repeats, warmup=warmup
    )


def size_metrics(
    model: nn.Module,
    image_size: int,
    *,
    reference_params: int | None = None,
    sparse: bool = False,
    latency_repeats: int = 5,
    large_batch: int | None = None,
) -> dict[str, float]:
    """All size metrics of ``model`` at input [1, 3, image_size, image_size].

    Args:
        model: the network (any device, either mode; neither is changed).
        image_size: side of the square input.
        reference_params: the teacher's parameter count; adds ``param_fraction``.
        sparse: add ``model_bytes_sparse`` (for unstructured pruning).
        latency_repeats: timed forward passes per batch size (after one warm-up).
        large_batch: also time this batch size (``latency_ms_b{large_batch}``).
    """
    probe = _cpu_eval_copy(model)
    nonzero = count_nonzero_params(probe)
    metrics: dict[str, float] = {
        "params": float(count_params(probe)),
        "nonzero_params": float(nonzero),
        "model_bytes": float(state_dict_bytes(probe)),
        "flops": float(count_flops(probe, image_size)),
        "latency_ms": median_latency_ms(
            probe, _probe_input(image_size, 1), repeats=latency_repeats, warmup=1
        ),
    }
    if reference_params is not None:
        metrics["param_fraction"] = nonzero / reference_params
    if sparse:
        metrics["model_bytes_sparse"] = float(sparse_state_dict_bytes(probe))
    if large_batch is not None:
        images = _probe_input(image_size, large_batch)
        metrics[f"latency_ms_b{large_batch}"] = median_latency_ms(
            probe, images, repeats=max(1, latency_repeats // 2), warmup=1
        )
    return metrics


@dataclass
class SizeProbe:
    """``CompressionHooks.size_metrics`` for a trial: :func:`size_metrics` once per epoch.

    Batch-32 latency costs a second or more on a large model, so it is measured only on the
    call for the trial's last epoch; the probe counts its calls from ``next_epoch`` (the first
    epoch this process runs, later than 0 after a resume).

    Attributes:
        image_size: input side.
        final_epoch: index of the trial's last epoch (epochs - 1).
        next_epoch: the epoch of the next call.
        reference_params: the teacher's parameter count (for ``param_fraction``).
        sparse: also report ``model_bytes_sparse``.
        extra: constant keys added to every report (e.g. the pruning rate actually applied).
    """

    image_size: int
    final_epoch: int
    next_epoch: int = 0
    reference_params: int | None = None
    sparse: bool = False
    extra: Mapping[str, float] | None = None

    def __call__(self, model: nn.Module) -> dict[str, float]:
        epoch = self.next_epoch
        self.next_epoch += 1
        metrics = size_metrics(
            model,
            self.image_size,
            reference_params=self.reference_params,
            sparse=self.sparse,
            large_batch=32 if epoch >= self.final_epoch else None,
        )
        return {**metrics, **(self.extra or {})}
