"""How a trial uses its accelerator: number format, autocast, loss scaling, memory layout, copies.

A study chooses once (the spec's ``training.precision`` and ``training.channels_last``,
:class:`AcceleratorOptions`); each process resolves that choice for its device into an
:class:`Accelerator`, which the training loop, the teacher stage, the teacher cache and the
evaluation share:

* ``precision``: ``fp32``, ``bf16``, ``fp16`` or ``auto``. ``auto`` is bf16 on a CUDA device
  with native bfloat16 (compute capability 8.0 and later: A100, H100, L4...), fp32 on other
  CUDA devices and on the CPU. bf16 and fp16 run forward passes (and the matching loss's
  second-order head pass) under :func:`torch.autocast`; weights, optimiser state and the
  losses stay fp32. fp16's range is narrow, so it also scales the loss
  (:class:`torch.amp.GradScaler`) lest small gradients flush to zero; bf16 has fp32's range
  and needs no scaler. Both run on the CPU too (torch 2.14's CPU autocast covers every op of
  the loop, the second-order pass included), which the tests use; fp16 is meant for GPUs
  without bf16 (V100, T4).
* On CUDA, also: TF32 for fp32 matrix products and convolutions, cuDNN's autotuner (a study's
  batches all have one image size, so the tuned algorithm is reused every step),
  ``channels_last`` memory layout for models and image batches (the layout tensor cores'
  convolutions run in, so no transposes around each one), and batches copied to the device
  without blocking, from pinned memory.
* On the CPU at fp32 (``auto``'s choice there, the default): none of that. The path is the one
  the loop took before this module existed, bit for bit.

Loaders (:func:`loader_options`) pin memory on CUDA and keep several batches in flight per
worker; ``training.num_workers: auto`` is sized from the trial's CPUs
(:func:`auto_num_workers`).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_CHANNELS_LAST",
    "DEFAULT_PRECISION",
    "MAX_AUTO_WORKERS",
    "PRECISIONS",
    "PREFETCH_FACTOR",
    "Accelerator",
    "AcceleratorOptions",
    "PrecisionName",
    "ResolvedPrecision",
    "auto_num_workers",
    "configure_cuda_backends",
    "loader_options",
    "resolve_precision",
    "training_device",
    "widen",
]

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
ResolvedPrecision = Literal["fp32", "bf16", "fp16"]
#: What ``training.precision`` accepts.
PRECISIONS: Final[tuple[PrecisionName, ...]] = get_args(PrecisionName)
DEFAULT_PRECISION: Final[PrecisionName] = "auto"
#: channels_last applies on CUDA only; on the CPU it is ignored.
DEFAULT_CHANNELS_LAST: Final = True
#: Batches each loader worker keeps ready (PyTorch's default is 2): a GPU step is short next
#: to decoding a batch of JPEGs, so two in flight leave the device waiting whenever one
#: worker's batch is slow.
PREFETCH_FACTOR: Final = 4
#: ``num_workers: auto`` never starts more workers than this: past it, decoding outruns one
#: GPU's step and more processes only cost memory.
MAX_AUTO_WORKERS: Final = 8

_DTYPES: Final[dict[ResolvedPrecision, torch.dtype]] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

_Module = TypeVar("_Module", bound=nn.Module)


@dataclass(frozen=True)
class AcceleratorOptions:
    """What a study asks of its accelerator (the spec's ``training.precision`` and
    ``training.channels_last``); the one place their defaults live.

    Attributes:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see the module docstring).
        channels_last: models and image batches in channels-last layout on CUDA.
    """

    precision: PrecisionName = DEFAULT_PRECISION
    channels_last: bool = DEFAULT_CHANNELS_LAST

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision: must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )


def widen(tensor: Tensor) -> Tensor:
    """``tensor`` in fp32 when it is bf16 or fp16 (what autocast computed), else as it is
    (fp32 and fp64 untouched: the CPU default path, and tests' float64 references)."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


def training_device() -> torch.device:
    """Where a trial (and the teacher stage) trains: the first CUDA device this process sees
    (under Ray, one of the trial's GPUs), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _native_bf16(device: torch.device) -> bool:
    """Whether CUDA ``device`` computes in bfloat16 natively (not emulated through fp32)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_precision(precision: PrecisionName, device: torch.device | str) -> ResolvedPrecision:
    """The number format ``precision`` means on ``device``.

    Raises:
        ValueError: ``precision`` is unknown, or is ``bf16`` on a CUDA device without native
            bfloat16 (emulated bf16 is slower than fp32 there: ``fp16`` or ``auto`` fit it).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {list(PRECISIONS)}, got {precision!r}")
    where = torch.device(device)
    cuda = where.type == "cuda"
    if precision == "auto":
        return "bf16" if cuda and _native_bf16(where) else "fp32"
    if precision == "bf16" and cuda and not _native_bf16(where):
        name = torch.cuda.get_device_name(where)
        major, minor = torch.cuda.get_device_capability(where)
        raise ValueError(
            "precision: bf16 needs a CUDA device with native bfloat16 (compute capability 8.0 "
            f"or later; use fp16 or auto there), got {name} (capability {major}.{minor})"
        )
    return precision


def configure_cuda_backends() -> None:
    """TF32 for fp32 matrix products and convolutions, and cuDNN's autotuner, process-wide.

    TF32 keeps fp32's range with a 10-bit mantissa, the rounding bf16 training accepts
    anyway; the autotuner pays a few slow first steps for the fastest convolution algorithm
    of the study's one input shape. Only the newer per-backend settings are used: once they
    are mixed with the legacy ``allow_tf32`` flags, PyTorch raises on reading the precision.
    """
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    # cudnn.conv lives on the module object torch swaps in at import: mypy cannot see it.
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = True


@dataclass(frozen=True)
class Accelerator:
    """A study's :class:`AcceleratorOptions` resolved for one device.

    Build it with :meth:`on` (or :meth:`plain` for fp32 without layout changes, the CPU
    path). Attributes: ``device``; ``precision`` (``fp32``, ``bf16`` or ``fp16``, never
    ``auto``); ``channels_last`` (True only on CUDA).
    """

    device: torch.device
    precision: ResolvedPrecision = "fp32"
    channels_last: bool = False

    @classmethod
    def on(
        cls, device: torch.device | str, options: AcceleratorOptions | None = None
    ) -> Accelerator:
        """``options`` (default: the defaults) resolved for ``device``; on CUDA this also
        sets the process-wide backend flags (:func:`configure_cuda_backends`).

        Raises:
            ValueError: as :func:`resolve_precision`.
        """
        chosen = options or AcceleratorOptions()
        where = torch.device(device)
        cuda = where.type == "cuda"
        precision = resolve_precision(chosen.precision, where)
        if cuda:
            configure_cuda_backends()
        return cls(where, precision, channels_last=chosen.channels_last and cuda)

    @classmethod
    def plain(cls, device: torch.device | str = "cpu") -> Accelerator:
        """fp32 on ``device``, default layout, no backend flags touched."""
        return cls(torch.device(device))

    def runs_on(self, device: torch.device | str) -> bool:
        """Whether ``device`` is this accelerator's (``cuda`` is the current ``cuda:N``)."""
        other = torch.device(device)
        if other.type != self.device.type:
            return False
        if other.type != "cuda":
            return True
        ours, theirs = (
            torch.cuda.current_device() if d.index is None else d.index
            for d in (self.device, other)
        )
        return ours == theirs

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of autocast regions (float32: no autocast)."""
        return _DTYPES[self.precision]

    @property
    def pin_memory(self) -> bool:
        """Whether loaders pin their batches (for copies that do not block the host)."""
        return self.device.type == "cuda"

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast to :attr:`dtype` on the device; at fp32 a context that does nothing."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def widen(self, tensor: Tensor) -> Tensor:
        """What an autocast region computed, in fp32 (:func:`widen`); at fp32 ``tensor``
        itself whatever its dtype (a half or double model's outputs stay theirs)."""
        return tensor if self.precision == "fp32" else widen(tensor)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 (starting at 2^16, halved on every overflow); None for fp32
        and bf16, whose range needs none."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def prepare(self, model: _Module) -> _Module:
        """``model`` moved to the device (in place, and returned), channels-last on CUDA when
        asked; its 4-D weights [O, I, kh, kw] then have NHWC strides, the same values."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def images(self, images: Tensor) -> Tensor:
        """A batch of images [B, 3, H, W] on the device, channels-last when asked; the copy
        does not block when the loader pinned the batch."""
        layout = torch.channels_last if self.channels_last else torch.preserve_format
        return images.to(self.device, non_blocking=self.pin_memory, memory_format=layout)

    def tensor(self, value: Tensor) -> Tensor:
        """Any other batch tensor (labels [B, C], masks [B, C, H, W]...) on the device."""
        return value.to(self.device, non_blocking=self.pin_memory)


def auto_num_workers(cpus: float) -> int:
    """Loader workers for ``training.num_workers: auto`` on a trial of ``cpus`` CPUs: one CPU
    stays with the training process, the rest decode (at most :data:`MAX_AUTO_WORKERS`);
    a trial with under 2 CPUs loads in its own process (0)."""
    if cpus < 0:
        raise ValueError(f"cpus: must be a number >= 0, got {cpus}")
    return max(0, min(MAX_AUTO_WORKERS, int(cpus) - 1))


def loader_options(
    device: torch.device | str, *, num_workers: int, persistent: bool
) -> dict[str, Any]:
    """DataLoader keyword arguments for feeding ``device`` with ``num_workers`` workers.

    Pins batches on CUDA; with workers, keeps :data:`PREFETCH_FACTOR` batches in flight per
    worker and, where ``persistent``, keeps the workers from one pass to the next. A shuffled
    training loader must not be persistent: its later passes would draw their shuffle from
    another point of the global RNG than a fresh loader does, so a resumed trial would see
    other batches than an uninterrupted one (and random augmentation in workers would not
    restart from the epoch's seed).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers: must be an integer >= 0, got {num_workers}")
    options: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": torch.device(device).type == "cuda",
    }
    if num_workers > 0:
        options["prefetch_factor"] = PREFETCH_FACTOR
        options["persistent_workers"] = persistent
    return options
