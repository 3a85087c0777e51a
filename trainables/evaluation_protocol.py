"""Evaluation protocols: apc's own, and the one the paper's official code implements.

The spec's ``evaluation.protocol`` names one; it decides two things about the evaluation (the
loss and everything trained are the same under both):

``apc`` (the default)
    Labels as :class:`~trainables.data.voc.VOCMultiLabel` gives them by default: a class
    present only through objects marked difficult is a negative, and on ``seg_val`` its mask
    is dropped, so it is never an (image, class) pair. Grad-CAM is taken at the matched layer
    (:func:`trainables.models.matched_layer`: VGG ``features``, i.e. after pool5; ResNet
    ``layer4``), where the matching loss compares maps: 7x7 for VGG16 at 224-227 px.
``official``
    What ``pascal/evaluate_localization.py`` of the official code does: every object counts,
    difficult ones included (its data set reads no ``difficult`` flag, and its segmentation
    labels are the classes the mask shows), so the evaluation split is built with
    ``include_difficult=True`` where the data set has that option; and Grad-CAM is hooked at
    ``features._modules['42']``, the ReLU after VGG16_bn's last convolution, before pool5:
    14x14 at 227 px. Its loss (``features[:44]``, after pool5) still matches at 7x7, and so
    does apc's under either protocol.

The layer, by architecture (``grad_cam_layer="last_conv"``):

* VGG: the last ``ReLU`` of ``features`` (``features.42`` for vgg16_bn, ``features.27`` for
  vgg11_bn, torchvision's indices, which the official code's VGG shares). When input-size
  adaptation removed pool5 (small images), it has the matched layer's resolution.
* ResNet: ``layer4``, the matched layer (its last block ends in the ReLU after the residual
  sum; the official PASCAL code has no ResNet).
* A :class:`~trainables.models.SplitModel` (a quantized network) exists only as two parts split
  at the matched layer: refused.

:func:`grad_cam_view` gives the network split at that layer as a
:class:`~trainables.models.SplitModel` that shares the network's modules, so
:func:`trainables.models.forward_features` / :func:`~trainables.models.forward_head` and the
batched Grad-CAM of :mod:`trainables.evaluation` work on it unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from trainables.models import SplitModel, matched_layer_name

__all__ = [
    "EVALUATION_PROTOCOLS",
    "GRAD_CAM_LAYERS",
    "EvaluationProtocol",
    "GradCamLayer",
    "evaluation_protocol",
    "grad_cam_layer_name",
    "grad_cam_view",
    "protocol_dataset_options",
    "whole_model",
]

GradCamLayer = Literal["matched", "last_conv"]
#: Where evaluation takes Grad-CAM: the matched layer, or the last convolution's ReLU.
GRAD_CAM_LAYERS: Final[tuple[GradCamLayer, ...]] = ("matched", "last_conv")


@dataclass(frozen=True)
class EvaluationProtocol:
    """What one protocol changes in the evaluation.

    Attributes:
        name: the spec's ``evaluation.protocol`` value.
        dataset_options: constructor options the evaluation split is built with, over the
            study's ``dataset.options``, where the data set accepts them.
        grad_cam_layer: where the evaluation's Grad-CAM maps are taken.
    """

    name: str
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    grad_cam_layer: GradCamLayer = "matched"


EVALUATION_PROTOCOLS: Final[dict[str, EvaluationProtocol]] = {
    "apc": EvaluationProtocol("apc"),
    "official": EvaluationProtocol(
        "official", dataset_options={"include_difficult": True}, grad_cam_layer="last_conv"
    ),
}


def evaluation_protocol(name: str) -> EvaluationProtocol:
    """The protocol called ``name``.

    Raises:
        ValueError: an unknown name.
    """
    try:
        return EVALUATION_PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"evaluation protocol: must be one of {list(EVALUATION_PROTOCOLS)}, got {name!r}"
        ) from None


def protocol_dataset_options(name: str, accepted: Collection[str]) -> dict[str, Any]:
    """The options protocol ``name`` builds the evaluation split with, among ``accepted`` (the
    data set's constructor options): ``official`` on VOC gives ``include_difficult=True``; on
    data sets without difficult objects (shapes, image folders) it gives nothing."""
    options = evaluation_protocol(name).dataset_options
    return {key: value for key, value in options.items() if key in accepted}


def _check_layer(layer: str) -> None:
    if layer not in GRAD_CAM_LAYERS:
        raise ValueError(f"grad_cam_layer: must be one of {list(GRAD_CAM_LAYERS)}, got {layer!r}")


def _last_relu(model: tv_vgg.VGG) -> int:
    """Index in ``model.features`` of its last ReLU (after the last convolution)."""
    indices = [i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]
    if not indices:
        raise TypeError("model: a VGG whose features hold no ReLU has no last-conv layer")
    return indices[-1]


def grad_cam_layer_name(model: nn.Module, *, layer: GradCamLayer) -> str:
    """Dotted name of the submodule whose output evaluation explains under ``layer``.

    ``"matched"``: :func:`trainables.models.matched_layer_name` (``features`` / ``layer4``);
    ``"last_conv"``: ``features.<i>``, the last ReLU of a VGG's features (``features.42`` for
    vgg16_bn), ``layer4`` for a ResNet.

    Raises:
        ValueError: an unknown ``layer``, or ``"last_conv"`` of a :class:`SplitModel` (split at
            its matched layer, e.g. quantized).
        TypeError: not a torchvision VGG or ResNet.
    """
    _check_layer(layer)
    if layer == "matched":
        return matched_layer_name(model)
    if isinstance(model, SplitModel):
        raise ValueError(
            "grad_cam_layer: 'last_conv' needs the whole network; a SplitModel (quantized) "
            "exists only split at its matched layer, got 'last_conv'"
        )
    if isinstance(model, tv_vgg.VGG):
        return f"features.{_last_relu(model)}"
    if isinstance(model, tv_resnet.ResNet):
        return "layer4"
    raise TypeError(f"model: must be a torchvision VGG or ResNet, got {type(model).__name__}")


class _LayerView(SplitModel):
    """A VGG split after ``features[index]`` instead of after pool5; shares every module.

    ``features``: images [B, 3, S, S] -> the last ReLU's output [B, C, h, w] (``h = 2 x`` the
    matched layer's when pool5 is there); ``head``: the rest of ``features`` (pool5), global
    average pooling, flatten and the classifier -> logits [B, num_classes], so ``view(x)``
    equals ``model(x)``. ``whole`` is the network itself, for methods that need all of it.
    """

    def __init__(self, model: tv_vgg.VGG, index: int) -> None:
        head = nn.Sequential(
            OrderedDict(
                rest=model.features[index + 1 :],
                avgpool=model.avgpool,
                flatten=nn.Flatten(1),
                classifier=model.classifier,
            )
        )
        super().__init__(model.features[: index + 1], head)
        # Kept out of the module tree: its modules are the view's already, and state_dict,
        # .to() and mode flags must see each once.
        self.__dict__["whole"] = model
        self.training = model.training

    whole: tv_vgg.VGG


def grad_cam_view(model: nn.Module, *, layer: GradCamLayer) -> nn.Module:
    """``model`` as evaluation runs it so that its features are at ``layer``'s output.

    ``"matched"``, or a layer that is the matched one (ResNet): ``model`` itself. A VGG under
    ``"last_conv"``: a :class:`SplitModel` split after the last ReLU of ``features``, sharing
    ``model``'s modules (no copy; ``view(x) == model(x)``); :func:`whole_model` gives
    ``model`` back.

    Raises:
        ValueError, TypeError: as :func:`grad_cam_layer_name`.
    """
    name = grad_cam_layer_name(model, layer=layer)
    if name == matched_layer_name(model):
        return model
    assert isinstance(model, tv_vgg.VGG)  # the only family whose layers differ
    return _LayerView(model, int(name.rsplit(".", 1)[1]))


def whole_model(model: nn.Module) -> nn.Module:
    """The network a :func:`grad_cam_view` stands for (``model`` itself if it is none)."""
    return model.whole if isinstance(model, _LayerView) else model
