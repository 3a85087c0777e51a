"""Input-resolution attribution maps for evaluation: Grad-CAM, IG, LRP, EBP and RAP.

The paper evaluates compressed networks with Grad-CAM and also with Excitation Backprop,
LRP alpha1-beta0 and RAP (its Table 8). Every method here has the signature of
:data:`ATTRIBUTION_METHODS`::

    method(model, images [B, 3, H, W], targets [B] int64) -> maps [B, H, W]

with one map per image for its target class, at the image's resolution, unnormalised. Pixel-level
methods (IG, LRP, RAP) sum their attributions over the colour channels, as the papers do for
their heat maps; Grad-CAM and EBP are computed at a coarser layer and bilinearly upsampled.
Every method handles the whole batch at once (one forward and one backward pass per batch, IG
one per batch of interpolation steps), and none changes the caller's model: no parameter, no
buffer, no hook and no train/eval mode is left changed.

Where each comes from:

* ``grad_cam``: :func:`trainables.attribution.grad_cam` at the matched layer, upsampled.
* ``integrated_gradients``: captum's ``IntegratedGradients`` (zero baseline, 50 Gauss-Legendre
  steps).
* ``lrp``: captum's ``LRP`` with its ``Alpha1_Beta0_Rule`` on every convolution and linear
  layer, run on a canonical copy of the model (see :func:`lrp`).
* ``ebp``: Excitation Backprop (Zhang et al., ECCV 2016) from the paper; no maintained library
  implements it for PyTorch models with BN and residual blocks.
* ``rap``: Relative Attributing Propagation (Nam et al., AAAI 2020) after the paper's steps
  as its authors' reference code (wjNam/Relative_Attributing_Propagation) realises them, the
  code the attribution-preservation paper's official maps are based on; no library implements
  it.

LRP, EBP and RAP explain the model's inference function: BatchNorm with its running statistics
(folded into the preceding convolution, the usual LRP canonicalisation) and no dropout, whatever
the model's mode. Grad-CAM and IG differentiate the model as it is; call them in eval mode.

Supported models: torchvision VGG and ResNet (BasicBlock and Bottleneck) as built by
:func:`trainables.models.build_model`, structurally pruned ones included, and plain
``nn.Sequential`` networks of Conv2d, Linear, BatchNorm2d (after a convolution), ReLU, max and
average pooling, Flatten, Dropout and Identity.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from captum.attr import LRP, IntegratedGradients
from captum.attr._utils.custom_modules import Addition_Module
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from trainables.attribution import grad_cam, upsample_maps
from trainables.models import matched_layer

__all__ = [
    "ATTRIBUTION_METHODS",
    "AttributionMethod",
    "excitation_backprop",
    "grad_cam_map",
    "integrated_gradients",
    "lowered_logits",
    "lrp",
    "rap",
]

#: ``method(model, images [B, 3, H, W], targets [B] int64) -> maps [B, H, W]``.
AttributionMethod = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _check_targets(images: Tensor, targets: Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images: must have shape [B, C, H, W], got {tuple(images.shape)}")
    if targets.shape != images.shape[:1]:
        raise ValueError(
            f"targets: must hold one class index per image, shape {tuple(images.shape[:1])}, "
            f"got {tuple(targets.shape)}"
        )


# --------------------------------------------------------------------------------------------
# Gradient methods


def grad_cam_map(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Grad-CAM at the model's matched layer, bilinearly upsampled to the images.

    Args:
        model: a torchvision VGG or ResNet (its matched layer is explained); mode as given.
        images: [B, 3, H, W].
        targets: [B] int64, one class index per image.

    Returns:
        [B, H, W], >= 0, unnormalised.
    """
    _check_targets(images, targets)
    maps = grad_cam(model, matched_layer(model), images, targets)
    return upsample_maps(maps, (images.shape[-2], images.shape[-1]))


def integrated_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    n_steps: int = 50,
    internal_batch_size: int | None = None,
) -> Tensor:
    """Integrated Gradients (Sundararajan et al., 2017) by captum, summed over channels.

    ``(x - x0) * integral_0^1 d logit_t(x0 + a (x - x0)) / dx da`` with the all-zero baseline
    x0 (the mean image for normalised inputs), the integral by captum's default Gauss-Legendre
    rule with ``n_steps`` points. Completeness: the map sums to logit_t(x) - logit_t(x0) up to
    the quadrature error.

    Args:
        model: maps images to logits [B, num_classes]; differentiated in its current mode.
        images: [B, C, H, W].
        targets: [B] int64.
        n_steps: quadrature points.
        internal_batch_size: how many of the B * n_steps interpolated images go through the
            model at once; None: all in one forward and backward pass.

    Returns:
        [B, H, W], signed.
    """
    _check_targets(images, targets)
    with torch.enable_grad():
        attributions: Tensor = IntegratedGradients(model).attribute(
            images,
            baselines=torch.zeros_like(images),
            target=targets.to(images.device),
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
        )
    return attributions.detach().sum(dim=1)


# --------------------------------------------------------------------------------------------
# The model as a list of simple operations ("lowering"), with BatchNorm folded in.


@dataclass(frozen=True, eq=False)
class _Affine:
    """A convolution or linear layer (BN folded in): ``op(x, weight) + bias``."""

    weight: Tensor
    bias: Tensor | None
    conv: dict[str, Any] | None  # stride, padding, dilation, groups; None for a linear layer

    def apply(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer's linear part with another weight of the same shape, no bias."""
        if self.conv is None:
            return F.linear(x, weight)
        return F.conv2d(x, weight, None, **self.conv)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.linear(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias, **self.conv)


@dataclass(frozen=True, eq=False)
class _Pool:
    """A parameter-free pooling module (max, average, adaptive average)."""

    module: nn.Module


@dataclass(frozen=True, eq=False)
class _ReLU:
    pass


@dataclass(frozen=True, eq=False)
class _Flatten:
    pass


@dataclass(frozen=True, eq=False)
class _Residual:
    """``branch(x) + shortcut(x)`` (an empty shortcut is the identity); the ReLU follows."""

    branch: tuple[_Node, ...]
    shortcut: tuple[_Node, ...]


_Node = _Affine | _Pool | _ReLU | _Flatten | _Residual


def _affine(layer: nn.Conv2d | nn.Linear, bn: nn.Module | None = None) -> _Affine:
    """A Conv2d or Linear as :class:`_Affine`, with an eval-mode BatchNorm2d folded in."""
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    conv: dict[str, Any] | None = None
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise TypeError(f"model: Conv2d padding_mode {layer.padding_mode!r} not supported")
        conv = {
            "stride": layer.stride,
            "padding": layer.padding,
            "dilation": layer.dilation,
            "groups": layer.groups,
        }
    if bn is not None:
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            raise TypeError("model: BatchNorm2d without running statistics not supported")
        assert bn.running_var is not None
        scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
        shift = -bn.running_mean.detach() * scale
        if bn.weight is not None:
            scale = scale * bn.weight.detach()
            shift = shift * bn.weight.detach()
        if bn.bias is not None:
            shift = shift + bn.bias.detach()
        bias = shift if bias is None else bias * scale + shift
        weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return _Affine(weight, bias, conv)


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_SKIPPED = (nn.Dropout, nn.Identity)


def _lower_sequence(modules: Sequence[nn.Module]) -> list[_Node]:
    nodes: list[_Node] = []
    index = 0
    while index < len(modules):
        module = modules[index]
        following = modules[index + 1] if index + 1 < len(modules) else None
        if isinstance(module, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
            nodes.append(_affine(module, following))
            index += 1
        elif isinstance(module, nn.Conv2d | nn.Linear):
            nodes.append(_affine(module))
        elif isinstance(module, nn.ReLU):
            nodes.append(_ReLU())
        elif isinstance(module, _POOLS):
            nodes.append(_Pool(module))
        elif isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise TypeError("model: only Flatten(start_dim=1) is supported")
            nodes.append(_Flatten())
        elif isinstance(module, nn.Sequential):
            nodes.extend(_lower_sequence(list(module)))
        elif not isinstance(module, _SKIPPED):
            raise TypeError(f"model: module {type(module).__name__} is not supported")
        index += 1
    return nodes


def _lower_block(block: nn.Module) -> list[_Node]:
    branch: list[_Node]
    if isinstance(block, tv_resnet.BasicBlock):
        branch = [_affine(block.conv1, block.bn1), _ReLU(), _affine(block.conv2, block.bn2)]
    elif isinstance(block, tv_resnet.Bottleneck):
        branch = [
            _affine(block.conv1, block.bn1),
            _ReLU(),
            _affine(block.conv2, block.bn2),
            _ReLU(),
            _affine(block.conv3, block.bn3),
        ]
    else:
        raise TypeError(f"model: residual block {type(block).__name__} is not supported")
    shortcut = [] if block.downsample is None else _lower_sequence(list(block.downsample))
    return [_Residual(tuple(branch), tuple(shortcut)), _ReLU()]


def _lower(model: nn.Module) -> list[_Node]:
    """The model's inference function as simple operations, BN folded into convolutions."""
    if isinstance(model, tv_vgg.VGG):
        return [
            *_lower_sequence(list(model.features)),
            _Pool(model.avgpool),
            _Flatten(),
            *_lower_sequence(list(model.classifier)),
        ]
    if isinstance(model, tv_resnet.ResNet):
        nodes: list[_Node] = [_affine(model.conv1, model.bn1), _ReLU()]
        nodes.extend(_lower_sequence([model.maxpool]))
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                nodes.extend(_lower_block(block))
        nodes.extend([_Pool(model.avgpool), _Flatten(), _affine(model.fc)])
        return nodes
    if isinstance(model, nn.Sequential):
        return _lower_sequence(list(model))
    raise TypeError(
        f"model: must be a torchvision VGG or ResNet or an nn.Sequential, "
        f"got {type(model).__name__}"
    )


@dataclass(eq=False)
class _Step:
    """One operation of a forward pass and its input (for a residual block, both paths)."""

    node: _Node
    input: Tensor
    branch: list[_Step] = field(default_factory=list)
    shortcut: list[_Step] = field(default_factory=list)
    branch_out: Tensor | None = None
    shortcut_out: Tensor | None = None


def _run(nodes: Sequence[_Node], x: Tensor) -> tuple[Tensor, list[_Step]]:
    """Forward pass (no graph) that records every operation's input."""
    steps: list[_Step] = []
    for node in nodes:
        if isinstance(node, _Residual):
            a, branch = _run(node.branch, x)
            b, shortcut = _run(node.shortcut, x)
            steps.append(_Step(node, x, branch, shortcut, a, b))
            x = a + b
        else:
            steps.append(_Step(node, x))
            if isinstance(node, _Affine):
                x = node.forward(x)
            elif isinstance(node, _ReLU):
                x = F.relu(x)
            elif isinstance(node, _Flatten):
                x = torch.flatten(x, 1)
            else:
                x = node.module(x)
    return x, steps


def lowered_logits(model: nn.Module, images: Tensor) -> Tensor:
    """The logits [B, num_classes] of the canonical form LRP, EBP and RAP propagate through.

    Equal to ``model(images)`` in eval mode; exposed so tests can check the lowering.
    """
    with torch.no_grad():
        logits, _ = _run(_lower(model), images)
    return logits


# --------------------------------------------------------------------------------------------
# Relevance propagation through the lowered model


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    """a / b, and 0 where b == 0."""
    zero = b == 0
    return torch.where(zero, torch.zeros_like(a), a / torch.where(zero, torch.ones_like(b), b))


def _vjp(fn: Callable[[Tensor], Tensor], x: Tensor, cotangent: Tensor) -> Tensor:
    """(d fn / d x)^T cotangent, for a linear or piecewise linear ``fn``."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(leaf), leaf, cotangent)
    return grad


def _z_rule(module: nn.Module, x: Tensor, relevance: Tensor) -> Tensor:
    """Pooling: R_i = x_i * sum_j (d y_j / d x_i) R_j / y_j (max: winner takes all)."""
    return x * _vjp(module, x, _safe_div(relevance, module(x)))


def _per_sample_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


class _Rules(Protocol):
    def output(self, layer: _Affine, x: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        """Relevance at the input of the output layer."""
        ...

    def hidden(self, layer: _Affine, x: Tensor, relevance: Tensor) -> Tensor:
        """Relevance at the input of a hidden layer (x >= 0) from that at its output."""
        ...

    def add(self, a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        """Split the relevance of ``a + b`` between its terms."""
        ...

    def pixel(self, layer: _Affine, x: Tensor, relevance: Tensor) -> Tensor:
        """Relevance at the image from that at the first layer's output."""
        ...


def _backward(steps: Sequence[_Step], relevance: Tensor, rules: _Rules) -> Tensor:
    for step in reversed(steps):
        node = step.node
        if isinstance(node, _Affine):
            relevance = rules.hidden(node, step.input, relevance)
        elif isinstance(node, _Pool):
            relevance = _z_rule(node.module, step.input, relevance)
        elif isinstance(node, _Flatten):
            relevance = relevance.reshape(step.input.shape)
        elif isinstance(node, _Residual):
            assert step.branch_out is not None
            assert step.shortcut_out is not None
            to_branch, to_shortcut = rules.add(step.branch_out, step.shortcut_out, relevance)
            relevance = _backward(step.branch, to_branch, rules) + _backward(
                step.shortcut, to_shortcut, rules
            )
        # ReLU: relevance passes unchanged (it is zero where the ReLU's output is zero).
    return relevance


def _propagate(
    model: nn.Module, images: Tensor, targets: Tensor, rules: _Rules, *, to_pixels: bool
) -> Tensor:
    """Relevance at the image ([B, C, H, W]), or at the image layer's output.

    The image layer is the first convolution or linear layer; only a Flatten may precede it.
    The last layer must be a convolution or linear layer too (the logits).
    """
    _check_targets(images, targets)
    nodes = _lower(model)
    with torch.no_grad():
        logits, steps = _run(nodes, images)
    first = next((i for i, s in enumerate(steps) if isinstance(s.node, _Affine)), None)
    last = steps[-1]
    if first is None or not isinstance(last.node, _Affine) or first == len(steps) - 1:
        raise TypeError("model: must start and end with a convolution or linear layer")
    if any(not isinstance(s.node, _Flatten) for s in steps[:first]):
        raise TypeError("model: only a Flatten may come before the first layer")
    targets = targets.to(logits.device)
    relevance = rules.output(last.node, last.input, logits, targets)
    relevance = _backward(steps[first + 1 : -1], relevance, rules)
    if not to_pixels:
        return relevance
    pixel = steps[first]
    assert isinstance(pixel.node, _Affine)
    relevance = rules.pixel(pixel.node, pixel.input, relevance)
    return relevance.reshape(images.shape)


def _positive_contributions(layer: _Affine, x: Tensor, relevance: Tensor) -> Tensor:
    """The z+ rule on x >= 0: R_i = sum_j x_i w+_ij / (sum_i' x_i' w+_i'j) R_j, bias ignored."""
    positive = layer.weight.clamp(min=0)
    z = layer.apply(x, positive)
    return x * _vjp(lambda v: layer.apply(v, positive), x, _safe_div(relevance, z))


def _one_hot(logits: Tensor, targets: Tensor) -> Tensor:
    return F.one_hot(targets, logits.shape[1]).to(logits.dtype)


class _ExcitationBackprop:
    """Marginal winning probabilities (Zhang et al. 2016), not the contrastive variant."""

    def output(self, layer: _Affine, x: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        return _positive_contributions(layer, x, _one_hot(logits, targets))

    def hidden(self, layer: _Affine, x: Tensor, relevance: Tensor) -> Tensor:
        return _positive_contributions(layer, x, relevance)

    def add(self, a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        # A sum is a node with two excitatory (+1) connections: only positive inputs win.
        a, b = a.clamp(min=0), b.clamp(min=0)
        share = _safe_div(relevance, a + b)
        return a * share, b * share

    def pixel(self, layer: _Affine, x: Tensor, relevance: Tensor) -> Tensor:
        raise AssertionError("EBP stops at the first layer's output")


def excitation_backprop(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Excitation Backprop (Zhang et al., ECCV 2016): the marginal winning probability map.

    Implemented from the paper (no maintained PyTorch library offers it). Top-down, the target
    output neuron has probability P(t) = 1 (the others 0), and each neuron's probability is
    passed to its inputs through excitatory connections only:

        P(a_i) = sum_j P(a_i | a_j) P(a_j),
        P(a_i | a_j) = a_i w_ij / sum_{i'} a_i' w_i'j  if w_ij >= 0, else 0,

    with a_i the (non-negative, post-ReLU) input activations and the bias ignored. This is
    exactly LRP's z+ rule (alpha1-beta0 for non-negative inputs) with the output relevance
    set to 1 instead of the logit: wherever both are defined, EBP = LRP alpha1-beta0 / logit_t.
    Max pooling passes a probability to the winner, average pooling in proportion to a_i (both
    follow from the rule with positive unit weights), ReLU passes it unchanged, BatchNorm is
    folded into the preceding convolution (so "excitatory" refers to the folded weights), and a
    residual sum a + b splits in proportion to its positive terms, a+ / (a+ + b+) and
    b+ / (a+ + b+) (a sum is a neuron with two +1 connections).

    The winning probabilities are defined for non-negative inputs; the image is not, so the map
    is read at the lowest layer where they are defined (the EBP paper, too, reads its maps at an
    inner layer, not at the pixels): the first convolution's output (after its ReLU), summed
    over channels and bilinearly upsampled to the
    image (VGG: already at image resolution; ResNet: the stem's stride 2). Each map sums to 1
    up to probability lost at neurons whose excitatory input is zero.

    Args:
        model: a supported model (see the module docstring); explained in eval semantics.
        images: [B, C, H, W].
        targets: [B] int64.

    Returns:
        [B, H, W], >= 0.
    """
    probabilities = _propagate(model, images, targets, _ExcitationBackprop(), to_pixels=False)
    if probabilities.dim() != 4:
        raise TypeError("model: Excitation Backprop needs a convolution as the first layer")
    return upsample_maps(probabilities.sum(dim=1), (images.shape[-2], images.shape[-1]))


class _RelativeAttributingPropagation:
    """RAP's rules (Nam et al., AAAI 2020); see :func:`rap`."""

    def output(self, layer: _Affine, x: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        if layer.conv is not None or x.dim() != 2:
            raise TypeError("model: RAP needs a linear output layer")
        contributions = x * layer.weight[targets]
        magnitude = contributions.abs()
        target_logits = logits.gather(1, targets.view(-1, 1))
        return _safe_div(magnitude, magnitude.sum(dim=1, keepdim=True)) * target_logits

    def hidden(self, layer: _Affine, x: Tensor, relevance: Tensor) -> Tensor:
        if bool((x < 0).any()):
            raise TypeError("model: RAP's hidden layers need non-negative inputs (after ReLU)")
        positive = layer.weight.clamp(min=0)
        negative = (-layer.weight).clamp(min=0)  # |w-|
        excite = layer.apply(x, positive)  # sum of positive contributions, P_j
        inhibit = layer.apply(x, negative)  # magnitude of negative contributions, N_j
        relevant = relevance.clamp(min=0)
        irrelevant = relevance.clamp(max=0)
        to_excitatory = _safe_div(relevant, excite)
        to_inhibitory = _safe_div(relevant + irrelevant, excite + inhibit) + _safe_div(
            irrelevant, inhibit
        )
        spread = x * _vjp(lambda v: layer.apply(v, positive), x, to_excitatory) + x * _vjp(
            lambda v: layer.apply(v, negative), x, to_inhibitory
        )
        # Uncertain shifting: the excess over the layer's relevance is taken evenly off every
        # neuron that received some, which conserves the relevance and leaves the neurons
        # of less than average contribution negative.
        received = (spread != 0).to(spread.dtype)
        excess = _per_sample_sum(spread) - _per_sample_sum(relevance)
        return spread - received * _safe_div(excess, _per_sample_sum(received))

    def add(self, a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        share = _safe_div(relevance, a + b)
        return a * share, b * share

    def pixel(self, layer: _Affine, x: Tensor, relevance: Tensor) -> Tensor:
        # z^B rule, the bounds being each image's smallest and largest value.
        dims = tuple(range(1, x.dim()))
        low = x.amin(dim=dims, keepdim=True).expand_as(x)
        high = x.amax(dim=dims, keepdim=True).expand_as(x)
        positive = layer.weight.clamp(min=0)
        negative = layer.weight.clamp(max=0)
        z = layer.apply(x, layer.weight) - layer.apply(low, positive) - layer.apply(high, negative)
        s = _safe_div(relevance, z)
        return (
            x * _vjp(lambda v: layer.apply(v, layer.weight), x, s)
            - low * _vjp(lambda v: layer.apply(v, positive), x, s)
            - high * _vjp(lambda v: layer.apply(v, negative), x, s)
        )


def rap(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Relative Attributing Propagation (Nam et al., AAAI 2020), summed over channels.

    No library implements it; the rules are the paper's steps (absolute influence
    normalisation, propagation of relevant and irrelevant units, uncertain shifting) as the
    authors' reference code computes them, with the differences stated below. Relevance R
    (signed) is propagated from the target logit y_t to the image:

    * Output layer, absolute influence normalisation: with c_i = x_i w_it the contributions
      of the last hidden layer to the target, R_i = |c_i| / sum_i' |c_i'| * y_t (strong
      negative influences count as relevant too; the bias is left out of c_i, which the
      reference code spreads over some of them).
    * Hidden convolutions and linear layers (inputs x >= 0, bias ignored), relevant and
      irrelevant propagation: with P_j = sum_i x_i w+_ij, N_j = sum_i x_i |w-_ij|, R_j = R+_j +
      R-_j (positive and negative parts),

          R_i = sum_j x_i w+_ij R+_j / P_j
              + sum_j x_i |w-_ij| (R+_j / (P_j + N_j) + R-_j / N_j + R-_j / (P_j + N_j)),

      so relevant neurons pass relevance to what excites them and, less, to what inhibits them,
      and irrelevant ones pass it to what inhibits them. This is the reference code's rule for
      convolutions; its linear layers send R- along the excitatory connections instead, an
      inconsistency not copied (one rule for both). Then uncertain shifting: the total differs
      from sum_j R_j (inhibitors are counted on top), and the difference is subtracted evenly
      from every input neuron with a nonzero R_i (per image), which conserves the relevance and
      makes the below-average ones negative.
    * Pooling: R_i = x_i * sum_j (d y_j / d x_i) R_j / y_j (max: to the winner); ReLU: passed
      unchanged; BatchNorm: folded into the preceding convolution (the reference code instead
      passes relevance through BN unchanged and uses the unfolded weights).
    * Residual sum a + b (ResNet): R_a = a R / (a + b), R_b = b R / (a + b), as the reference
      code does; the two paths' relevance is summed at the fork. a and b may have either sign
      (pre-ReLU), so a sum near zero with nonzero relevance gives large opposite terms.
    * Image layer: the z^B rule, R_i = sum_j (x_i w_ij - l w+_ij - h w-_ij) / Z_j * R_j with l
      and h the image's smallest and largest value over all channels and pixels.

    Every layer conserves the relevance, so each map sums to y_t (up to relevance at neurons
    with a zero denominator).

    Args:
        model: a supported model (see the module docstring); explained in eval semantics.
        images: [B, C, H, W].
        targets: [B] int64.

    Returns:
        [B, H, W], signed (positive: relevant, negative: irrelevant).
    """
    relevance = _propagate(
        model, images, targets, _RelativeAttributingPropagation(), to_pixels=True
    )
    return relevance.sum(dim=1)


# --------------------------------------------------------------------------------------------
# LRP by captum on a canonical copy


class _CanonicalBlock(nn.Module):
    """``branch(x) + shortcut(x)`` through captum's Addition_Module (relevance split a : b)."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut  # None: the identity
        self.add = Addition_Module()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out: Tensor = self.add(self.branch(x), identity)
        return out


class _CanonicalNet(nn.Module):
    """A chain of modules, flattening before those listed (no module to flatten)."""

    def __init__(self, layers: list[nn.Module], flatten_before: set[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.flatten_before = flatten_before

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            if index in self.flatten_before:
                x = torch.flatten(x, 1)
            x = layer(x)
        return x


def _module(node: _Affine, *, split_input: bool = False) -> nn.Module:
    """A fresh Conv2d / Linear computing ``node``; with ``split_input`` it takes
    [x+, -x-] (twice the input channels) and computes ``node`` of x = x+ + x-."""
    weight = node.weight
    if split_input:
        if node.conv is not None and node.conv["groups"] != 1:
            raise TypeError("model: a grouped first convolution is not supported")
        weight = torch.cat([weight, -weight], dim=1)
    out_features, in_features = weight.shape[0], weight.shape[1]
    bias = node.bias is not None
    layer: nn.Linear | nn.Conv2d
    if node.conv is None:
        layer = torch.nn.utils.skip_init(
            nn.Linear,
            in_features,
            out_features,
            bias=bias,
            device=weight.device,
            dtype=weight.dtype,
        )
    else:
        groups = node.conv["groups"]
        layer = torch.nn.utils.skip_init(
            nn.Conv2d,
            in_features * groups,
            out_features,
            tuple(weight.shape[2:]),
            bias=bias,
            device=weight.device,
            dtype=weight.dtype,
            **node.conv,
        )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if node.bias is not None and layer.bias is not None:
            layer.bias.copy_(node.bias)
    setattr(layer, "rule", Alpha1_Beta0_Rule(set_bias_to_zero=True))  # noqa: B010  # captum reads it
    return layer


def _canonical_modules(
    nodes: Sequence[_Node], *, split_first: bool
) -> tuple[list[nn.Module], set[int]]:
    layers: list[nn.Module] = []
    flatten_before: set[int] = set()
    for node in nodes:
        if isinstance(node, _Flatten):
            flatten_before.add(len(layers))
        elif isinstance(node, _Affine):
            layers.append(_module(node, split_input=split_first))
            split_first = False
        elif isinstance(node, _ReLU):
            layers.append(nn.ReLU())
        elif isinstance(node, _Pool):
            layers.append(copy.deepcopy(node.module))
        else:
            # A block never holds the first layer (the image goes into a convolution first).
            branch, branch_flat = _canonical_modules(node.branch, split_first=False)
            shortcut, shortcut_flat = _canonical_modules(node.shortcut, split_first=False)
            assert not branch_flat
            assert not shortcut_flat
            layers.append(
                _CanonicalBlock(
                    nn.Sequential(*branch), nn.Sequential(*shortcut) if shortcut else None
                )
            )
    return layers, flatten_before


def _split(images: Tensor) -> Tensor:
    """[x+, -x-] along the channels: [B, 2C, H, W], >= 0."""
    return torch.cat([images.clamp(min=0), (-images).clamp(min=0)], dim=1)


def lrp(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """LRP alpha1-beta0 (Bach et al. 2015; Montavon et al. 2018) by captum, summed over channels.

    The rule at every convolution and linear layer (captum's ``Alpha1_Beta0_Rule`` with the
    bias set to zero) is R_i = sum_j z+_ij / sum_i' z+_i'j R_j with z+_ij = (x_i w_ij)+, from
    R = logit_t at the target output: only positive contributions receive relevance, the bias
    none, so every layer conserves relevance and each map sums to logit_t, except for the
    relevance of neurons without any positive contribution, which is dropped (an activation
    from the bias alone; in a ResNet also a negative branch output given relevance by the
    residual split below: about 0.2% of the logit on a random ResNet-18). Pooling uses
    captum's epsilon rule with
    epsilon = 1e-9 (the z rule: max pooling to the winner, average pooling in proportion to x),
    ReLU and dropout pass relevance unchanged.

    captum's rule clamps the weights, not the inputs, so it is alpha1-beta0 only for inputs
    x >= 0; it needs each module used once, non-in-place ReLUs and module-level additions. So
    it runs on a canonical copy with the same function, the caller's model untouched:

    * BatchNorm folded into the preceding convolution (the standard LRP canonicalisation);
    * the image split into x+ and -x- (both >= 0, twice the channels) and the first layer's
      weight into [W, -W]: z+ on that input is (x_i w_ij)+ exactly, and the map adds both parts;
    * fresh ReLUs and pools, dropout and identities dropped;
    * a ResNet block's ``out += identity`` through captum's ``Addition_Module`` (epsilon rule:
      R_a = a R / (a + b), R_b = b R / (a + b), which conserves relevance; a and b may have
      either sign, so this split, unlike alpha1-beta0's, can send negative relevance down).

    Args:
        model: a supported model (see the module docstring); explained in eval semantics.
        images: [B, C, H, W].
        targets: [B] int64.

    Returns:
        [B, H, W]. On VGG every pixel has the sign of logit_t (relevance of one sign only);
        ResNet maps have both signs (the residual split).
    """
    _check_targets(images, targets)
    layers, flatten_before = _canonical_modules(_lower(model), split_first=True)
    net = _CanonicalNet(layers, flatten_before).eval()
    with torch.enable_grad():
        relevance: Tensor = LRP(net).attribute(
            _split(images).detach().requires_grad_(), target=targets.to(images.device)
        )
    return relevance.detach().sum(dim=1)


#: The attribution methods by name, each ``method(model, images, targets) -> [B, H, W]``.
ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {
    "grad_cam": grad_cam_map,
    "integrated_gradients": integrated_gradients,
    "lrp": lrp,
    "ebp": excitation_backprop,
    "rap": rap,
}
