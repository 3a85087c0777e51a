"""Teacher and student networks: torchvision CNNs adapted to the task, and their matched layer.

Every model stays an instance of torchvision's own class (``VGG`` or ``ResNet``) so state dicts
are torchvision's and pruning libraries see ordinary modules. What this module adds:

* the number of classes and a compact classifier head (the paper's VGG16 has 15.2M parameters,
  which rules out torchvision's 25088x4096 classifier);
* adaptation to the input size: trailing downsampling stages are removed until the matched
  layer is at least ``min_feature_size`` pixels wide (7x7 at 224 px as in the paper, 8x8 at 64 px);
* students by width divisor: every convolution's width divided (the paper's VGG16/2, /4, /8);
* the one place that names the matched layer of each architecture (:data:`ARCHITECTURES`) and
  the split of a forward pass into ``features -> head`` at that layer, which the matching losses
  use to differentiate through the head only.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

__all__ = [
    "ARCHITECTURES",
    "SPLIT_MATCHED_LAYER",
    "WIDTH_DIVISORS",
    "Architecture",
    "SplitModel",
    "WeightsFile",
    "build_model",
    "eval_mode",
    "forward_features",
    "forward_head",
    "imagenet_weights_file",
    "linear_head_weight",
    "load_imagenet_weights",
    "matched_layer",
    "matched_layer_name",
]

Family = Literal["vgg", "resnet"]

#: Width divisors: the paper's VGG16/2, /4, /8, and narrower for laptop-sized teachers.
WIDTH_DIVISORS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Architecture:
    """What the rest of the code needs to know about one torchvision architecture.

    Attributes:
        name: torchvision constructor name, e.g. ``"vgg16_bn"``.
        family: ``"vgg"`` or ``"resnet"``; selects how the model is split at the matched layer.
        matched_layer: dotted name of the submodule whose output is matched and explained
            (VGG: ``features``, i.e. pool5; ResNet: ``layer4``).
        weights: name of the torchvision weights enum with the ImageNet weights.
        config: VGG layer configuration key, or ResNet block type and block counts.
    """

    name: str
    family: Family
    matched_layer: str
    weights: str
    config: str | tuple[type[tv_resnet.BasicBlock | tv_resnet.Bottleneck], tuple[int, ...]]


ARCHITECTURES: dict[str, Architecture] = {
    "vgg11_bn": Architecture("vgg11_bn", "vgg", "features", "VGG11_BN_Weights", "A"),
    "vgg16_bn": Architecture("vgg16_bn", "vgg", "features", "VGG16_BN_Weights", "D"),
    "resnet18": Architecture(
        "resnet18", "resnet", "layer4", "ResNet18_Weights", (tv_resnet.BasicBlock, (2, 2, 2, 2))
    ),
    "resnet34": Architecture(
        "resnet34", "resnet", "layer4", "ResNet34_Weights", (tv_resnet.BasicBlock, (3, 4, 6, 3))
    ),
    "resnet50": Architecture(
        "resnet50", "resnet", "layer4", "ResNet50_Weights", (tv_resnet.Bottleneck, (3, 4, 6, 3))
    ),
}


def _architecture(arch: str) -> Architecture:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"arch: must be one of {sorted(ARCHITECTURES)}, got {arch!r}") from None


def _kept_downsamplings(image_size: int, total: int, min_feature_size: int) -> int:
    """How many of a network's ``total`` stride-2 stages keep the map >= min_feature_size."""
    if image_size < min_feature_size:
        raise ValueError(
            f"image_size: must be at least min_feature_size={min_feature_size}, got {image_size}"
        )
    return min(total, math.floor(math.log2(image_size / min_feature_size)))


def _init_like_torchvision(module: nn.Module) -> None:
    # torchvision's scheme for convolutions and BN. Linear layers keep PyTorch's default init:
    # torchvision's N(0, 0.01) suits its 4096-wide head, but three such layers of our compact
    # head shrink the logits ~1e-5x and stall training (shapes teacher, 6 epochs: 28% mAP with
    # it, 44% without).
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _build_vgg(
    arch: Architecture, num_classes: int, divisor: int, kept: int, dropout: float
) -> tv_vgg.VGG:
    assert isinstance(arch.config, str)
    cfg: list[str | int] = [v if v == "M" else int(v) // divisor for v in tv_vgg.cfgs[arch.config]]
    features = tv_vgg.make_layers(cfg, batch_norm=arch.name.endswith("_bn"))
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    for index in pools[kept:]:
        # Identity keeps the module indices, so ImageNet state dicts still load by name.
        features[index] = nn.Identity()
    width = int(cfg[-2])  # channels of the last convolution ("M" is last)
    hidden = 512 // divisor
    # torchvision's VGG would allocate a 25088x4096 classifier here; build it on the meta
    # device and replace the parts we change.
    with torch.device("meta"):
        model = tv_vgg.VGG(nn.Sequential(), num_classes=num_classes, init_weights=False)
    model.features = features
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(
        nn.Linear(width, hidden),
        nn.ReLU(True),
        nn.Dropout(p=dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(True),
        nn.Dropout(p=dropout),
        nn.Linear(hidden, num_classes),
    )
    _init_like_torchvision(model)
    return model


class _SlimResNet(tv_resnet.ResNet):  # type: ignore[misc]  # torchvision is untyped
    """torchvision's ResNet with every stage's width divided by ``divisor``."""

    inplanes: int

    def __init__(
        self,
        block: type[tv_resnet.BasicBlock | tv_resnet.Bottleneck],
        layers: list[int],
        *,
        divisor: int,
        num_classes: int,
    ) -> None:
        self._divisor = divisor
        super().__init__(block, layers, num_classes=num_classes)
        self.fc = nn.Linear(512 // divisor * block.expansion, num_classes)

    def _make_layer(
        self,
        block: type[tv_resnet.BasicBlock | tv_resnet.Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        if planes == 64 and self.inplanes == 64 and self._divisor != 1:
            # First stage: the stem was built at width 64 before this hook could run.
            self.inplanes = 64 // self._divisor
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
            self.bn1 = self._norm_layer(self.inplanes)
        stage: nn.Sequential = super()._make_layer(
            block, planes // self._divisor, blocks, stride, dilate
        )
        return stage


def _remove_stride(stage: nn.Sequential) -> None:
    first = stage[0]
    for conv in (getattr(first, "conv1", None), getattr(first, "conv2", None)):
        if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):
            conv.stride = (1, 1)
    if isinstance(first.downsample, nn.Sequential):
        shortcut = first.downsample[0]
        assert isinstance(shortcut, nn.Conv2d)
        shortcut.stride = (1, 1)


def _build_resnet(
    arch: Architecture, num_classes: int, divisor: int, kept: int
) -> tv_resnet.ResNet:
    assert not isinstance(arch.config, str)
    block, layers = arch.config
    model = _SlimResNet(block, list(layers), divisor=divisor, num_classes=num_classes)
    # Stride-2 stages after the stem convolution, in the order they are given up.
    removal_order: list[Callable[[], None]] = [
        lambda: setattr(model, "maxpool", nn.Identity()),
        lambda: _remove_stride(model.layer4),
        lambda: _remove_stride(model.layer3),
        lambda: _remove_stride(model.layer2),
    ]
    for remove in removal_order[: 5 - kept]:
        remove()
    return model


def build_model(
    arch: str,
    *,
    num_classes: int,
    image_size: int = 224,
    width_divisor: int = 1,
    pretrained: bool = False,
    min_feature_size: int = 7,
    dropout: float = 0.5,
) -> nn.Module:
    """Build a torchvision CNN for ``num_classes`` outputs at ``image_size`` input.

    Args:
        arch: a key of :data:`ARCHITECTURES`.
        num_classes: size of the output layer.
        image_size: side of the square input; trailing stride-2 stages are dropped until the
            matched layer is at least ``min_feature_size`` wide.
        width_divisor: divide every convolution's width (and the VGG head) by this.
        pretrained: load torchvision's ImageNet weights (all but the new head). Downloads into
            the torch hub cache unless the file is already there (:func:`imagenet_weights_file`
            names it); only for full-width models.
        min_feature_size: smallest side of the matched layer's map.
        dropout: dropout probability in the VGG head.

    Returns:
        The model; ``model(images [B, 3, S, S]) -> logits [B, num_classes]``.
    """
    spec = _architecture(arch)
    problems = []
    if num_classes < 1:
        problems.append(f"num_classes: must be a positive integer, got {num_classes}")
    if width_divisor not in WIDTH_DIVISORS:
        problems.append(
            f"width_divisor: must be one of {list(WIDTH_DIVISORS)}, got {width_divisor}"
        )
    if pretrained and width_divisor != 1:
        problems.append(
            f"pretrained: ImageNet weights exist only for width_divisor=1, got {width_divisor}"
        )
    if problems:
        raise ValueError("; ".join(problems))
    if spec.family == "vgg":
        total = sum(1 for v in tv_vgg.cfgs[str(spec.config)] if v == "M")
        kept = _kept_downsamplings(image_size, total, min_feature_size)
        model: nn.Module = _build_vgg(spec, num_classes, width_divisor, kept, dropout)
    else:
        kept = _kept_downsamplings(image_size, 5, min_feature_size)
        model = _build_resnet(spec, num_classes, width_divisor, kept)
    if pretrained:
        load_imagenet_weights(model, arch)
    return model


@dataclass(frozen=True)
class WeightsFile:
    """Where torchvision's ImageNet weights for one architecture come from and are cached.

    Attributes:
        path: the file in the torch hub cache, ``torch.hub.get_dir()/checkpoints/<name>``
            (``$TORCH_HOME/hub/checkpoints`` when ``TORCH_HOME`` is set), named as torch.hub
            names what it downloads: the url's basename, which carries a SHA-256 prefix.
        url: where torchvision's weights enum downloads it from.
    """

    path: Path
    url: str

    @property
    def offline_hint(self) -> str:
        """How to provide the file where it cannot be downloaded."""
        return (
            f"download {self.url} on a machine that is online and put it in {self.path.parent}, "
            "or set TORCH_HOME"
        )


def imagenet_weights_file(arch: str) -> WeightsFile:
    """The file :func:`load_imagenet_weights` reads for ``arch``, and the url it comes from.

    The cache folder is read at each call, so ``TORCH_HOME`` (or ``torch.hub.set_dir``) set
    after import counts. Nothing is created or downloaded.
    """
    from torchvision.models import get_weight

    url = str(get_weight(f"{_architecture(arch).weights}.IMAGENET1K_V1").url)
    name = Path(urlsplit(url).path).name
    return WeightsFile(path=Path(torch.hub.get_dir()) / "checkpoints" / name, url=url)


def _cached_imagenet_state(arch: str) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict for ``arch`` from the hub cache, downloaded if absent."""
    from urllib.error import URLError

    weights = imagenet_weights_file(arch)
    if weights.path.is_file():
        # torch.hub checks the hash in the name only when it downloads; a file copied into the
        # cache by hand (an offline cluster) is checked here, so a partial copy says so.
        _check_weights_hash(arch, weights)
    try:
        state: dict[str, Tensor] = torch.hub.load_state_dict_from_url(
            weights.url,
            model_dir=str(weights.path.parent),  # the folder imagenet_weights_file names
            map_location="cpu",
            check_hash=True,
            weights_only=True,  # tensors only: a file someone put there cannot run code
        )
    except URLError as error:  # no file and no network (HTTP errors are URLErrors too)
        raise RuntimeError(
            f"pretrained: needs torchvision's ImageNet weights for {arch}, got no file "
            f"{weights.path} (download failed: {error.reason}; {weights.offline_hint})"
        ) from error
    return state


def _check_weights_hash(arch: str, weights: WeightsFile) -> None:
    named = re.search(r"-([a-f0-9]+)\.", weights.path.name)  # torch.hub's naming convention
    if named is None:
        return
    with weights.path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    prefix = named.group(1)
    if not digest.startswith(prefix):
        raise RuntimeError(
            f"pretrained: needs torchvision's ImageNet weights for {arch}, got {weights.path} "
            f"whose SHA-256 starts {digest[: len(prefix)]}, not {prefix} (a partial copy or "
            f"another file; {weights.offline_hint})"
        )


def load_imagenet_weights(
    model: nn.Module, arch: str, *, state_dict: dict[str, Tensor] | None = None
) -> None:
    """Copy torchvision's ImageNet weights for ``arch`` into ``model``, except the head.

    Args:
        model: a full-width model from :func:`build_model`.
        arch: its architecture name.
        state_dict: torchvision's state dict; when None, read from the torch hub cache
            (:func:`imagenet_weights_file`), downloaded there first if it is not.

    Raises:
        RuntimeError: the file is missing and cannot be downloaded, or is not the file its
            name promises (its SHA-256 does not start with the hash in the name).
    """
    spec = _architecture(arch)
    state = state_dict if state_dict is not None else _cached_imagenet_state(arch)
    head_prefix = "classifier." if spec.family == "vgg" else "fc."
    body = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith(head_prefix) for k in missing):
        raise RuntimeError(
            f"ImageNet weights for {spec.name} do not fit the model: "
            f"missing {missing}, unexpected {unexpected}"
        )


_UNSUPPORTED = "model: must be a torchvision VGG or ResNet, got {}"

#: The matched layer of a :class:`SplitModel`: its ``features`` part.
SPLIT_MATCHED_LAYER = "features"


class SplitModel(nn.Module):
    """A network held as two parts split at its matched layer, e.g. a quantized copy whose
    parts are exported graphs (:mod:`trainables.quantization`).

    ``features``: images [B, 3, S, S] -> matched-layer features [B, C, h, w] (the matched
    layer is this part); ``head``: features [B, C, h, w] -> logits [B, num_classes].
    """

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        logits: Tensor = self.head(self.features(images))
        return logits


def _family(model: nn.Module) -> Family:
    if isinstance(model, tv_vgg.VGG):
        return "vgg"
    if isinstance(model, tv_resnet.ResNet):
        return "resnet"
    raise TypeError(_UNSUPPORTED.format(type(model).__name__))


def matched_layer_name(model: nn.Module) -> str:
    """Dotted name of the submodule whose output is matched (``features`` or ``layer4``)."""
    if isinstance(model, SplitModel):
        return SPLIT_MATCHED_LAYER
    family = _family(model)
    return next(a.matched_layer for a in ARCHITECTURES.values() if a.family == family)


def matched_layer(model: nn.Module) -> nn.Module:
    """The submodule whose output the matching losses and Grad-CAM use."""
    return model.get_submodule(matched_layer_name(model))


def forward_features(model: nn.Module, images: Tensor) -> Tensor:
    """Run ``model`` up to its matched layer: images [B, 3, S, S] -> features [B, C, h, w]."""
    if isinstance(model, SplitModel):
        split: Tensor = model.features(images)
        return split
    if isinstance(model, tv_vgg.VGG):
        features: Tensor = model.features(images)
        return features
    if isinstance(model, tv_resnet.ResNet):
        x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
        out: Tensor = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return out
    raise TypeError(_UNSUPPORTED.format(type(model).__name__))


def forward_head(model: nn.Module, features: Tensor) -> Tensor:
    """Run ``model`` from its matched layer: features [B, C, h, w] -> logits [B, num_classes]."""
    if isinstance(model, SplitModel):
        head: Tensor = model.head(features)
        return head
    if isinstance(model, tv_vgg.VGG):
        logits: Tensor = model.classifier(torch.flatten(model.avgpool(features), 1))
        return logits
    if isinstance(model, tv_resnet.ResNet):
        out: Tensor = model.fc(torch.flatten(model.avgpool(features), 1))
        return out
    raise TypeError(_UNSUPPORTED.format(type(model).__name__))


def linear_head_weight(model: nn.Module) -> Tensor | None:
    """The weight [num_classes, C] of a head that is global-average-pool + linear, else None.

    For such a head d logit_y / d A_c[i, j] = W[y, c] / (h * w) everywhere, so Grad-CAM's channel
    weights have a closed form and need no backward pass.
    """
    if isinstance(model, tv_resnet.ResNet) and isinstance(model.avgpool, nn.AdaptiveAvgPool2d):
        weight: Tensor = model.fc.weight
        return weight
    return None


@contextlib.contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Put ``models`` (None skipped) in eval mode; afterwards every submodule's own train/eval
    flag comes back exactly (mixed modes such as a frozen BN included)."""
    flags = [(m, m.training) for model in models if model is not None for m in model.modules()]
    try:
        for model in models:
            if model is not None:
                model.eval()
        yield
    finally:
        for module, training in flags:
            module.training = training
