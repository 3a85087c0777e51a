"""Quantization: int8 quantization-aware training with matching losses, and post-training modes.

Searched config (``search_spaces/quantization.yaml``), key ``mode``:

* ``qat_int8``: int8 quantization-aware fine-tuning. Weights int8 per output channel
  (symmetric), activations uint8 per tensor (affine), as fake-quant during training with
  KD + beta * matching on the shared loop (:func:`trainables.loop.train_student`); ``matching``,
  ``beta``, ``drop_p`` as in distillation. Grad-CAM and SWA's channel weights differentiate
  through the fake-quant head (straight-through rounding).
* ``static_int8`` (PTQ): the same int8 scheme, activation ranges calibrated on the first
  ``calibration_size`` training images (index order, so a resume calibrates identically) with
  ``observer`` ``histogram`` (the x86 default, clips outliers) or ``minmax``.
* ``dynamic_int8`` (PTQ): int8 per-channel weights everywhere; the linear layers quantize their
  input activations per batch at run time (dynamic range). PyTorch has no dynamic-activation int8
  convolution, so convolutions take the int8 weights with float activations (weight-only), as
  TF Lite's dynamic range mode does where it has no hybrid kernel.
* ``fp16`` (PTQ): weights and activations in float16 (the network cast to half; inputs and
  the matched-layer features cross the part boundaries as float32 holding float16 values).

How (torchao's PT2E flow, the non-deprecated path of torch 2.14): the student is split at its
matched layer into a ``features`` and a ``head`` part (:class:`trainables.models.SplitModel`),
each captured with ``torch.export`` (batch dimension dynamic) and quantized on its own, so the
matched layer's output stays a float tensor that Grad-CAM and the matching loss differentiate
w.r.t. Quantizer: torchao's ``X86InductorQuantizer`` (oneDNN int8 kernels on x86 CPUs;
``prepare_qat_pt2e`` / ``prepare_pt2e`` then ``convert_pt2e``); for ``dynamic_int8`` its dynamic
linear config composed with a small weight-only quantizer for convolutions. BatchNorm is folded
into the convolutions first (the teacher's running statistics): QAT then fine-tunes the folded
convolutions, and conversion skips torchao's conv-BN QAT folding, which re-exports ~100 pattern
graphs (33 s per conversion on 2 cores) and would make per-epoch conversion unaffordable.

What is measured, every reported epoch:

* ``map``, ``attr_*`` on the **converted** int8 model (QAT: the student converted after that
  epoch, i.e. what training would deliver if it stopped there), against the float teacher.
  Converted int8 graphs have no gradient (quantize ops are integer casts), so Grad-CAM of an
  int8 model is taken on its **fake-quant equivalent**: the features part is the converted int8
  graph itself (the matched-layer activations are the int8 model's), and in the head each
  quantize -> dequantize pair is replaced by ``torch.fake_quantize_per_tensor_affine`` with the
  same scale and zero point (the same values forward, straight-through gradients backward). The
  head's weights stay int8. This view (:func:`evaluation_view`) is also the model a trial hands
  over for export and final artifacts; its ``model.pt2`` holds the int8 weights and torchao's
  ``quantized_decomposed`` ops, so loading it needs ``import torchao`` first (it registers them).
* ``model_bytes``: ``torch.save`` of the converted model's state (int8 weights, float32 biases,
  per-channel float32 scales and int64 zero points; float16 tensors for ``fp16``), attributes the
  graphs no longer use removed. ``params``: weights and biases of the deployed (BN-folded)
  network; ``param_fraction`` against the teacher (whose BN parameters are folded away here);
  ``flops``: the float network's multiply-adds (2 per MAC), the same operations now in int8.
* ``latency_ms`` (batch 1) and ``latency_ms_b32`` (last epoch): CPU, on the converted model
  lowered to oneDNN int8 kernels (``lower_pt2e_quantized_to_x86``: the ``qconv``/``qlinear``
  ops a deployed model would run, no C++ compilation), median of 5 (b32: 2) runs after 2
  warm-ups; ``fp16``: the half model as is (CPUs without native float16 arithmetic run it
  slower than float32). Lowering costs ~2 s, and int8 kernels take as long whatever the
  weights' values, so a QAT trial times batch 1 once (its first epoch in this process) and
  reports that time every epoch.

PTQ modes do not train. They report once per study epoch, the same measurement each time (the
model does not change), so that a PTQ trial has as many results as a QAT trial: Tune's
schedulers and the searcher, which take a trial with fewer results than ``epochs`` for one
stopped early, treat it as finished, and MLflow's per-epoch curves line up across modes. A PTQ
result's ``loss`` is the evaluation split's task loss (there is no training loss).

Checkpoints: QAT the loop's :class:`~trainables.loop.TrainState` (the fake-quant student's
state, observers included; resuming rebuilds the prepared graphs from the teacher, which is
deterministic, and loads it); PTQ the next epoch only (calibration is deterministic).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader, Subset
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from trainables.loop import CompressionHooks, TrainState, train_student
from trainables.models import SplitModel, forward_features, forward_head
from trainables.precision import AcceleratorOptions
from trainables.size import count_flops, count_params, median_latency_ms
from trainables.trial import (
    CheckpointReporter,
    TrialSetup,
    build_split,
    build_teacher,
    image_size,
    loop_config,
    make_evaluator,
    make_loaders,
    matching_config,
    run_tune_trial,
)

__all__ = [
    "DEFAULT_CALIBRATION_SIZE",
    "MODES",
    "OBSERVERS",
    "PTQ_MODES",
    "QuantizationSettings",
    "QuantizedNet",
    "convert_qat",
    "evaluation_view",
    "fold_batch_norm",
    "lower_for_cpu",
    "parse_config",
    "prepare_qat",
    "quantization_trainable",
    "quantize_ptq",
    "quantized_size_metrics",
    "run_quantization",
    "split_model",
]

Mode = Literal["qat_int8", "fp16", "dynamic_int8", "static_int8"]
Observer = Literal["histogram", "minmax"]
MODES: Final[tuple[Mode, ...]] = ("qat_int8", "fp16", "dynamic_int8", "static_int8")
PTQ_MODES: Final[tuple[Mode, ...]] = ("fp16", "dynamic_int8", "static_int8")
OBSERVERS: Final[tuple[Observer, ...]] = ("histogram", "minmax")
DEFAULT_CALIBRATION_SIZE: Final[int] = 256
#: Config keys that only QAT reads (PTQ does not fine-tune, so nothing is matched).
_QAT_KEYS: Final[tuple[str, ...]] = ("matching", "beta", "drop_p")
#: Config keys that only static PTQ reads.
_STATIC_KEYS: Final[tuple[str, ...]] = ("calibration_size", "observer")
#: Batch of the example inputs of ``torch.export``: a batch of 1 would be specialised.
_EXPORT_BATCH: Final[int] = 2


@dataclass(frozen=True)
class QuantizationSettings:
    """A trial's quantization settings (see the module docstring)."""

    mode: Mode
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    observer: Observer = "histogram"


def parse_config(config: Mapping[str, Any]) -> QuantizationSettings:
    """The quantization settings of a trial's searched config.

    Raises:
        ValueError: every problem at once ("key: rule, got value"), e.g. a PTQ mode given a
            matching loss, or calibration settings for a mode that does not calibrate.
    """
    problems: list[str] = []
    mode = config.get("mode")
    if mode not in MODES:
        problems.append(f"mode: must be one of {list(MODES)}, got {mode!r}")
        raise ValueError("; ".join(problems))
    if mode in PTQ_MODES:
        for key in _QAT_KEYS:
            if key in config and not (key == "matching" and config[key] == "none"):
                problems.append(
                    f"{key}: applies only to mode 'qat_int8' (post-training modes do not "
                    f"fine-tune), got {config[key]!r} with mode {mode!r}"
                )
    if mode != "static_int8":
        problems.extend(
            f"{key}: applies only to mode 'static_int8', got {config[key]!r} with mode {mode!r}"
            for key in _STATIC_KEYS
            if key in config
        )
    size = config.get("calibration_size", DEFAULT_CALIBRATION_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        problems.append(f"calibration_size: must be an integer >= 1, got {size!r}")
        size = DEFAULT_CALIBRATION_SIZE
    observer = config.get("observer", "histogram")
    if observer not in OBSERVERS:
        problems.append(f"observer: must be one of {list(OBSERVERS)}, got {observer!r}")
        observer = "histogram"
    if problems:
        raise ValueError("; ".join(problems))
    return QuantizationSettings(cast(Mode, mode), size, cast(Observer, observer))


# --- the float network: BN folded, split at the matched layer ------------------------------


def _fold_pair(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
        setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(owner, bn_name, nn.Identity())


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode CPU copy of ``model`` with every BatchNorm folded into its convolution.

    The BN layers become ``Identity`` (module names stay); the outputs equal the original's in
    eval mode up to float rounding. ``model`` is left unchanged.
    """
    folded: nn.Module = copy.deepcopy(model).cpu().eval()
    network: Any = folded  # torchvision's classes are untyped
    if isinstance(network, tv_vgg.VGG):
        layers = network.features
        for index in range(len(layers) - 1):
            _fold_pair(layers, str(index), str(index + 1))
    elif isinstance(network, tv_resnet.ResNet):
        _fold_pair(network, "conv1", "bn1")
        for stage in (network.layer1, network.layer2, network.layer3, network.layer4):
            for block in stage:
                for number in (1, 2, 3):
                    if hasattr(block, f"conv{number}"):
                        _fold_pair(block, f"conv{number}", f"bn{number}")
                if isinstance(block.downsample, nn.Sequential):
                    _fold_pair(block.downsample, "0", "1")
    else:
        raise TypeError(f"model: must be a torchvision VGG or ResNet, got {type(model).__name__}")
    return folded


_PARTS: Final[dict[type[nn.Module], tuple[tuple[str, ...], tuple[str, ...]]]] = {
    tv_vgg.VGG: (("features",), ("avgpool", "classifier")),
    tv_resnet.ResNet: (
        ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
        ("avgpool", "fc"),
    ),
}


def _part(model: nn.Module, keep: tuple[str, ...]) -> nn.Module:
    # A shallow copy of the same class holding only some children: forward_features and
    # forward_head still recognise it, and an export of it lifts only those weights.
    part = copy.copy(model)
    part._modules = {k: v for k, v in model._modules.items() if k in keep}
    return part


class _Features(nn.Module):
    """images [B, 3, S, S] -> matched-layer features [B, C, h, w] of a VGG/ResNet part."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return forward_features(self.model, images)


class _Head(nn.Module):
    """features [B, C, h, w] -> logits [B, num_classes] of a VGG/ResNet part."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> Tensor:
        return forward_head(self.model, features)


def split_model(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``model``'s features and head parts, sharing its modules: head(features(x)) == model(x)."""
    for family, (features, head) in _PARTS.items():
        if isinstance(model, family):
            return _Features(_part(model, features)), _Head(_part(model, head))
    raise TypeError(f"model: must be a torchvision VGG or ResNet, got {type(model).__name__}")


# --- the quantized network -------------------------------------------------------------------


def _is_exported(part: nn.Module) -> bool:
    return isinstance(part, fx.GraphModule)


def _set_mode(part: nn.Module, training: bool) -> None:
    """Switch ``part`` between train and eval behaviour.

    An exported graph has no modes of its own: its only mode-dependent op here is the VGG
    head's dropout (BN is folded), so the ``train`` argument of its ``aten.dropout`` nodes is
    set directly. (torchao's ``move_exported_model_to_train/eval`` does this by re-exporting
    pattern graphs, 0.8 s a call on 2 cores, which every epoch's train/eval switch would pay.)
    """
    if not _is_exported(part):
        part.train(training)
        return
    graph = cast(fx.GraphModule, part)
    changed = False
    for node in graph.graph.nodes:
        is_dropout = node.op == "call_function" and node.target == torch.ops.aten.dropout.default
        if is_dropout and bool(node.args[2]) != training:
            node.args = (node.args[0], node.args[1], training)
            changed = True
    if changed:
        graph.recompile()
    for module in graph.modules():
        module.training = training


class QuantizedNet(SplitModel):
    """A quantized network as two parts split at the matched layer (see the module docstring).

    ``features``: images [B, 3, S, S] float32 -> features [B, C, h, w] float32; ``head``:
    features -> logits [B, num_classes] float32. Either part is a PT2E graph (prepared with
    fake-quant, or converted) or, for ``fp16``, a half-precision module. ``train()``/``eval()``
    switch the graphs' dropout between its train and eval forms.
    """

    def __init__(self, features: nn.Module, head: nn.Module, *, mode: Mode) -> None:
        super().__init__(features, head)
        self.mode: Mode = mode

    def train(self, mode: bool = True) -> QuantizedNet:
        self.training = mode
        _set_mode(self.features, mode)
        _set_mode(self.head, mode)
        return self


class _Half(nn.Module):
    """Runs ``module`` in float16: float32 in, float32 (holding float16 values) out."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.half()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.module(x.half())
        return out.float()


def _dynamic_batch() -> dict[int, Any]:
    return {0: torch.export.Dim.DYNAMIC}


def _export(part: nn.Module, example: Tensor, *, training: bool) -> fx.GraphModule:
    part.train(training)
    # strict: Dynamo records each call of a module reused in forward (ResNet blocks call one
    # ReLU twice) as its own source, which the quantizer's pattern partitions need.
    program = torch.export.export(part, (example,), dynamic_shapes=(_dynamic_batch(),), strict=True)
    graph: fx.GraphModule = program.module()
    return graph


def _x86_quantizer(*, qat: bool, observer: Observer = "histogram") -> Any:
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=qat)
    if not qat and observer == "minmax":
        # Same uint8 spec as the default, only the range estimate differs.
        spec = dataclasses.replace(
            config.input_activation,
            observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12),
        )
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    return X86InductorQuantizer().set_global(config)


def _dynamic_quantizer() -> Any:
    from torchao.quantization.pt2e import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import (
        ComposableQuantizer,
        QuantizationAnnotation,
        QuantizationSpec,
        Quantizer,
    )
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver,
    )

    class ConvWeights(Quantizer):  # type: ignore[misc]  # torchao is untyped
        """int8 per-channel weights of every convolution, activations left in float."""

        def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
            for node in model.graph.nodes:
                if node.op == "call_function" and node.target == torch.ops.aten.conv2d.default:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={node.args[1]: weight}, _annotated=True
                    )
            return model

        def validate(self, model: fx.GraphModule) -> None:
            del model

    linear = X86InductorQuantizer().set_module_type_qconfig(
        nn.Linear, get_default_x86_inductor_quantization_config(is_dynamic=True)
    )
    return ComposableQuantizer([linear, ConvWeights()])


def _drop_unused_state(graph: fx.GraphModule) -> fx.GraphModule:
    """Remove parameters and buffers no node reads (conversion leaves the float weights)."""
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:
            owner_name, _, leaf = name.rpartition(".")
            owner = graph.get_submodule(owner_name) if owner_name else graph
            delattr(owner, leaf)
    graph.delete_all_unused_submodules()
    return graph


def _convert(prepared: nn.Module) -> fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return _drop_unused_state(convert_pt2e(cast(fx.GraphModule, prepared)))


def prepare_qat(model: nn.Module, image_size: int) -> QuantizedNet:
    """A fake-quant int8 copy of ``model`` (BN folded) for quantization-aware training.

    Args:
        model: a VGG or ResNet (its BN is folded here; ``model`` is left unchanged).
        image_size: side S of the input images [B, 3, S, S].

    Returns:
        The prepared network in train mode; deterministic for the same weights, so a checkpoint
        of its state loads into another preparation of the same model.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    features, head = split_model(fold_batch_norm(model))
    images = torch.zeros(_EXPORT_BATCH, 3, image_size, image_size)
    with torch.no_grad():
        example = features.eval()(images)
    parts = [
        prepare_qat_pt2e(_export(part, x, training=True), _x86_quantizer(qat=True))
        for part, x in ((features, images), (head, example))
    ]
    return QuantizedNet(parts[0], parts[1], mode="qat_int8").train()


def convert_qat(model: QuantizedNet) -> QuantizedNet:
    """The int8 model of a QAT-prepared network (a CPU copy; ``model`` is left unchanged)."""
    if model.mode != "qat_int8" or not _is_exported(model.features):
        raise ValueError(f"model: must be a QAT-prepared network, got mode {model.mode!r}")
    prepared = copy.deepcopy(model).cpu().eval()
    return QuantizedNet(_convert(prepared.features), _convert(prepared.head), mode="qat_int8")


def quantize_ptq(
    model: nn.Module,
    mode: Mode,
    *,
    image_size: int,
    calibration: Iterable[Tensor] = (),
    observer: Observer = "histogram",
) -> QuantizedNet:
    """Post-training quantization of ``model`` (BN folded; ``model`` is left unchanged).

    Args:
        model: a VGG or ResNet.
        mode: ``fp16``, ``dynamic_int8`` or ``static_int8``.
        image_size: side S of the input images.
        calibration: batches of images [B, 3, S, S] whose activation ranges ``static_int8``
            calibrates on (required there, unused otherwise).
        observer: ``static_int8``'s range estimate.

    Returns:
        The converted network in eval mode, on the CPU.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    features, head = split_model(fold_batch_norm(model))
    if mode == "fp16":
        return QuantizedNet(_Half(features), _Half(head), mode=mode).eval()
    if mode not in ("dynamic_int8", "static_int8"):
        raise ValueError(f"mode: must be one of {list(PTQ_MODES)}, got {mode!r}")
    images = torch.zeros(_EXPORT_BATCH, 3, image_size, image_size)
    with torch.no_grad():
        example = features(images)
    prepared = []
    for part, x in ((features, images), (head, example)):
        quantizer = (
            _dynamic_quantizer()
            if mode == "dynamic_int8"
            else _x86_quantizer(qat=False, observer=observer)
        )
        prepared.append(prepare_pt2e(_export(part, x, training=False), quantizer))
    with torch.no_grad():
        if mode == "static_int8":
            batches = 0
            for batch in calibration:
                prepared[1](prepared[0](batch))
                batches += 1
            if batches == 0:
                raise ValueError("calibration: static_int8 needs at least one batch, got none")
        else:
            # Weight observers record when the graph runs; activations are dynamic.
            prepared[1](prepared[0](images))
    return QuantizedNet(_convert(prepared[0]), _convert(prepared[1]), mode=mode).eval()


# --- the fake-quant equivalent for gradients, and CPU lowering -------------------------------


def _fake_quant(
    x: Tensor, scale: float | Tensor, zero_point: int | Tensor, quant_min: int, quant_max: int
) -> Tensor:
    """quantize -> dequantize of ``x`` with a straight-through gradient (zero where clipped).

    The forward values are those of torchao's ``quantize_per_tensor`` then
    ``dequantize_per_tensor`` (the same arithmetic); built from plain ops, so the graph still
    exports (``torch.fake_quantize_per_tensor_affine`` has no fake-tensor kernel for export).
    """
    if isinstance(scale, Tensor):
        scale = scale.detach().reshape(())
    if isinstance(zero_point, Tensor):
        zero_point = zero_point.detach().reshape(())
    unclamped = torch.round(x.detach() * (1.0 / scale)) + zero_point
    levels = torch.clamp(unclamped, quant_min, quant_max)
    values = (levels - zero_point) * scale
    inside = (unclamped >= quant_min) & (unclamped <= quant_max)
    return values + (x - x.detach()) * inside


def _differentiable(graph: fx.GraphModule) -> fx.GraphModule:
    """A copy of a converted graph with every activation quantize -> dequantize pair replaced
    by :func:`_fake_quant`: the same forward values, with gradients w.r.t. the input."""
    ops = torch.ops.quantized_decomposed
    quantize = {ops.quantize_per_tensor.default, ops.quantize_per_tensor.tensor}
    dequantize = {ops.dequantize_per_tensor.default, ops.dequantize_per_tensor.tensor}
    result = copy.deepcopy(graph)
    for node in list(result.graph.nodes):
        source = node.args[0] if node.op == "call_function" and node.args else None
        if (
            node.target in dequantize
            and isinstance(source, fx.Node)
            and source.op == "call_function"
            and source.target in quantize
        ):
            x, scale, zero_point, quant_min, quant_max = source.args[:5]
            with result.graph.inserting_before(node):
                fake = result.graph.call_function(
                    _fake_quant, (x, scale, zero_point, quant_min, quant_max)
                )
            node.replace_all_uses_with(fake)
            result.graph.erase_node(node)
            if not source.users:
                result.graph.erase_node(source)
    result.graph.lint()
    result.recompile()
    return result


def evaluation_view(model: QuantizedNet) -> QuantizedNet:
    """The network evaluated and handed over: ``model``'s converted features part, and its head
    with fake-quant in place of quantize -> dequantize, so Grad-CAM has gradients at the
    matched layer (module docstring). The same outputs as ``model``; fp16 is returned as is."""
    if model.mode == "fp16" or not _is_exported(model.head):
        return model
    head = _differentiable(cast(fx.GraphModule, model.head))
    return QuantizedNet(model.features, head, mode=model.mode).eval()


class _Lowered(nn.Module):
    """A lowered graph for timing; train()/eval() leave it alone (it has no modes)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, images: Tensor) -> Tensor:
        out: Tensor = self.graph(images)
        return out

    def train(self, mode: bool = True) -> _Lowered:
        self.training = mode
        return self


def lower_for_cpu(model: QuantizedNet, batch: int, image_size: int) -> nn.Module:
    """``model`` as a deployed CPU model would run it, for input [batch, 3, S, S].

    int8 modes: the converted graphs lowered to oneDNN int8 kernels (``qconv_pointwise``,
    ``qlinear_pointwise``), specialised to ``batch``; fp16: the half model itself.
    """
    if model.mode == "fp16" or not _is_exported(model.features):
        return model
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    probe = copy.deepcopy(model).cpu().eval()
    images = torch.zeros(batch, 3, image_size, image_size)
    with torch.no_grad():
        lowered = lower_pt2e_quantized_to_x86(cast(fx.GraphModule, probe), (images,))
    return _Lowered(lowered)


def _state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getbuffer().nbytes


def quantized_size_metrics(
    model: QuantizedNet,
    image_size: int,
    *,
    params: int,
    flops: int,
    reference_params: int | None = None,
    large_batch: int | None = None,
    latency_repeats: int = 5,
    latency_ms: float | None = None,
) -> dict[str, float]:
    """Size metrics of a converted network (module docstring): bytes, params, FLOPs, latency.

    Args:
        model: the converted network (not the QAT-prepared one).
        image_size: side S of the input.
        params, flops: of the float network it came from (BN folded).
        reference_params: the teacher's parameter count (adds ``param_fraction``).
        large_batch: also time this batch (``latency_ms_b{large_batch}``).
        latency_repeats: timed forward passes per batch size (after two warm-ups).
        latency_ms: batch 1 latency measured before on the same architecture, reused (int8
            kernels take as long whatever the weights' values; lowering costs ~2 s).
    """
    metrics: dict[str, float] = {
        "params": float(params),
        "model_bytes": float(_state_bytes(model)),
        "flops": float(flops),
    }
    if latency_ms is not None:
        metrics["latency_ms"] = latency_ms
    batches = [1] if latency_ms is None else []
    batches += [] if large_batch is None else [large_batch]
    for batch in batches:
        lowered = lower_for_cpu(copy.deepcopy(model).cpu().eval(), batch, image_size)
        repeats = latency_repeats if batch == 1 else max(1, latency_repeats // 2)
        images = torch.zeros(batch, 3, image_size, image_size)
        # Lowered graphs hold oneDNN's packed weights, which cannot be deep-copied: timed as is.
        latency = median_latency_ms(lowered, images, repeats=repeats, warmup=2)
        metrics["latency_ms" if batch == 1 else f"latency_ms_b{batch}"] = latency
    if reference_params is not None:
        metrics["param_fraction"] = params / reference_params
    return metrics


# --- the trainable ---------------------------------------------------------------------------


def _calibration_batches(setup: TrialSetup, size: int) -> DataLoader[Any]:
    """The first ``size`` training images (all when fewer), in index order."""
    train = build_split(setup, "train", setup.train_size)
    subset = Subset(train, range(min(size, len(train))))
    return DataLoader(
        subset, batch_size=setup.batch_size, shuffle=False, num_workers=setup.num_workers
    )


def _images(loader: Iterable[Mapping[str, Any]]) -> Iterable[Tensor]:
    for batch in loader:
        yield batch["image"]


def run_quantization(
    config: Mapping[str, Any],
    setup: TrialSetup,
    teacher_state: Mapping[str, Tensor],
    *,
    report: CheckpointReporter,
    resume: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """One quantization trial without Ray: quantize the teacher, (fine-tune,) evaluate, report.

    Every epoch's metrics are those of the converted model (module docstring); the last epoch
    hands over :func:`evaluation_view` of it as the compressed model.
    """
    settings = parse_config(config)
    device = torch.device(device)
    # fp32 and the exported graphs' own layout whatever the study asks: autocast would round
    # the fake-quant and int8 graphs' float arithmetic, which is what the trial measures.
    setup = dataclasses.replace(
        setup, accelerator=AcceleratorOptions(precision="fp32", channels_last=False)
    )
    torch.manual_seed(setup.seed)
    teacher = build_teacher(setup, teacher_state)
    size = image_size(setup)
    folded = fold_batch_norm(teacher)
    params, flops = count_params(folded), count_flops(folded, size)
    reference = count_params(teacher)
    train_loader, eval_loader = make_loaders(setup, device=device)
    evaluate = make_evaluator(
        eval_loader, multi_label=setup.multi_label, device=device, accelerator=setup.accelerator
    )

    measured: dict[str, float] = {}

    def sizes(model: QuantizedNet, final: bool) -> dict[str, float]:
        metrics = quantized_size_metrics(
            model,
            size,
            params=params,
            flops=flops,
            reference_params=reference,
            large_batch=32 if final else None,
            latency_ms=measured.get("latency_ms"),
        )
        measured.setdefault("latency_ms", metrics["latency_ms"])
        return metrics

    if settings.mode != "qat_int8":
        _run_ptq(
            settings, setup, teacher, evaluate, sizes, report=report, resume=resume, device=device
        )
        return
    student = prepare_qat(teacher, size)
    state = None if resume is None else TrainState.from_dict(resume)
    converted: dict[str, QuantizedNet] = {}
    next_epoch = 0 if state is None else state.epoch

    def evaluate_int8(model: nn.Module, against: nn.Module | None) -> dict[str, float]:
        view = evaluation_view(convert_qat(cast(QuantizedNet, model)))
        converted["view"] = view
        return evaluate(view.to(device), against)

    def size_hook(model: nn.Module) -> dict[str, float]:
        nonlocal next_epoch
        del model  # the metrics are the converted model's, which evaluate_int8 just built
        final = next_epoch >= setup.epochs - 1
        next_epoch += 1
        return sizes(converted["view"], final)

    def report_state(epoch: int, metrics: dict[str, float], train_state: TrainState) -> None:
        final = epoch == setup.epochs - 1
        report(
            epoch, metrics, train_state.as_dict(), model=converted["view"].cpu() if final else None
        )

    train_student(
        student,
        teacher,
        train_loader,
        config=loop_config(config, setup),
        matching=matching_config(config),
        evaluate=evaluate_int8,
        report=report_state,
        hooks=CompressionHooks(size_metrics=size_hook),
        resume=state,
        device=device,
    )


def _run_ptq(
    settings: QuantizationSettings,
    setup: TrialSetup,
    teacher: nn.Module,
    evaluate: Any,
    sizes: Any,
    *,
    report: CheckpointReporter,
    resume: Mapping[str, Any] | None,
    device: torch.device,
) -> None:
    """Quantize once, measure once, report that measurement for each remaining study epoch."""
    start = 0 if resume is None else int(resume["epoch"])
    if start >= setup.epochs:
        return
    started = time.perf_counter()
    calibration = (
        _images(_calibration_batches(setup, settings.calibration_size))
        if settings.mode == "static_int8"
        else ()
    )
    model = quantize_ptq(
        teacher,
        settings.mode,
        image_size=image_size(setup),
        calibration=calibration,
        observer=settings.observer,
    )
    view = evaluation_view(model)
    quantized = time.perf_counter()
    metrics: dict[str, float] = dict(evaluate(view.to(device), teacher.to(device)))
    metrics.update(sizes(model, True))
    metrics["time_train_s"] = quantized - started
    metrics["time_eval_s"] = time.perf_counter() - quantized
    for epoch in range(start, setup.epochs):
        final = epoch == setup.epochs - 1
        report(epoch, dict(metrics), {"epoch": epoch + 1}, model=view.cpu() if final else None)
        # Later reports measured nothing new.
        metrics["time_train_s"] = metrics["time_eval_s"] = 0.0


def quantization_trainable(
    config: dict[str, Any], setup: TrialSetup, teacher_state: Mapping[str, Tensor]
) -> None:
    """Ray Tune function trainable: resumes from Tune's checkpoint, reports every epoch."""
    run_tune_trial(run_quantization, config, setup, teacher_state)
