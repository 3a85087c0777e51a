from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, vgg11_bn

from trainables.models import (
    ARCHITECTURES,
    build_model,
    forward_features,
    forward_head,
    linear_head_weight,
    load_imagenet_weights,
    matched_layer,
    matched_layer_name,
)


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("image_size", "feature_size"), [(64, 8), (112, 7), (224, 7)])
def test_split_forward_equals_model_and_matched_layer_is_at_least_7(
    arch: str, image_size: int, feature_size: int
) -> None:
    model = build_model(arch, num_classes=20, image_size=image_size, width_divisor=8).eval()
    images = torch.randn(2, 3, image_size, image_size)
    features = forward_features(model, images)
    assert features.shape[-2:] == (feature_size, feature_size)
    torch.testing.assert_close(forward_head(model, features), model(images))
    assert model(images).shape == (2, 20)


def test_matched_layer_output_is_the_split_point() -> None:
    captured: list[torch.Tensor] = []
    for arch in ("vgg16_bn", "resnet34"):
        model = build_model(arch, num_classes=5, image_size=64).eval()
        matched_layer(model).register_forward_hook(lambda _m, _i, o: captured.append(o))
        images = torch.randn(1, 3, 64, 64)
        model(images)
        torch.testing.assert_close(captured[-1], forward_features(model, images))
    assert matched_layer_name(build_model("vgg11_bn", num_classes=2, image_size=32)) == "features"
    assert matched_layer_name(build_model("resnet18", num_classes=2, image_size=32)) == "layer4"


@pytest.mark.parametrize("arch", ["vgg16_bn", "resnet18", "resnet50"])
@pytest.mark.parametrize("divisor", [2, 4, 8])
def test_width_divisor_divides_every_convolution(arch: str, divisor: int) -> None:
    full = _conv_widths(build_model(arch, num_classes=20, image_size=64))
    slim = _conv_widths(build_model(arch, num_classes=20, image_size=64, width_divisor=divisor))
    assert slim == [w // divisor for w in full]


def test_parameter_counts_match_the_paper_vgg16() -> None:
    # Paper Table 1: 15.22M for the VGG16 teacher (our head differs by 0.04M).
    teacher = build_model("vgg16_bn", num_classes=20, image_size=224)
    count = sum(p.numel() for p in teacher.parameters())
    assert 15.1e6 < count < 15.4e6
    student = build_model("vgg16_bn", num_classes=20, image_size=224, width_divisor=8)
    assert sum(p.numel() for p in student.parameters()) < count / 50


def test_vgg_and_resnet_state_dicts_keep_torchvision_names() -> None:
    ours = build_model("vgg11_bn", num_classes=20, image_size=64)
    reference = vgg11_bn()
    body = {k for k in reference.state_dict() if not k.startswith("classifier.")}
    assert body <= set(ours.state_dict())
    ours_r = build_model("resnet18", num_classes=20, image_size=64)
    assert {k for k in resnet18().state_dict() if not k.startswith("fc.")} <= set(
        ours_r.state_dict()
    )


@pytest.mark.parametrize(("arch", "factory"), [("vgg11_bn", vgg11_bn), ("resnet18", resnet18)])
def test_imagenet_state_dict_loads_all_but_the_head(arch: str, factory: type) -> None:
    reference = factory().eval()
    model = build_model(arch, num_classes=7, image_size=224)
    load_imagenet_weights(model, arch, state_dict=reference.state_dict())
    model.eval()
    images = torch.randn(1, 3, 224, 224)
    ref_features = (
        reference.features(images)
        if arch.startswith("vgg")
        else reference.layer4(
            reference.layer3(
                reference.layer2(
                    reference.layer1(
                        reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
                    )
                )
            )
        )
    )
    torch.testing.assert_close(forward_features(model, images), ref_features)


def test_linear_head_closed_form_only_for_resnet() -> None:
    assert linear_head_weight(build_model("resnet18", num_classes=3, image_size=64)) is not None
    assert linear_head_weight(build_model("vgg11_bn", num_classes=3, image_size=64)) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "alexnet", "num_classes": 2}, "arch: must be one of"),
        ({"arch": "vgg11_bn", "num_classes": 0}, "num_classes: must be a positive integer, got 0"),
        ({"arch": "vgg11_bn", "num_classes": 2, "width_divisor": 3}, "width_divisor: must be one"),
        ({"arch": "vgg11_bn", "num_classes": 2, "image_size": 4}, "image_size: must be at least"),
        (
            {"arch": "vgg11_bn", "num_classes": 2, "width_divisor": 2, "pretrained": True},
            "pretrained: ImageNet weights exist only for width_divisor=1",
        ),
    ],
)
def test_bad_arguments_name_the_rule_and_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)  # type: ignore[arg-type]
