from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn
from torchvision.models import resnet18, vgg16_bn

from trainables.attribution import channel_drop_mask, ewa_map, grad_cam, swa_map, upsample_maps
from trainables.models import build_model, matched_layer


def _torchvision_model(name: str) -> tuple[nn.Module, nn.Module]:
    model: nn.Module = vgg16_bn() if name == "vgg16_bn" else resnet18()
    return model.eval(), matched_layer(model)


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet18"])
def test_grad_cam_matches_captum_layer_grad_cam(name: str) -> None:
    model, layer = _torchvision_model(name)
    images = torch.randn(3, 3, 224, 224)
    targets = torch.tensor([3, 417, 999])
    ours = grad_cam(model, layer, images, targets)
    reference = LayerGradCam(model, layer).attribute(
        images, target=targets.tolist(), relu_attributions=True
    )
    assert ours.shape == (3, 7, 7)
    assert ours.max() > 0
    torch.testing.assert_close(ours, reference.squeeze(1), rtol=1e-4, atol=1e-6)


def test_grad_cam_is_differentiable_with_create_graph_and_detached_without() -> None:
    model = build_model("vgg11_bn", num_classes=4, image_size=32, width_divisor=8).eval()
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([0, 3])
    maps = grad_cam(model, matched_layer(model), images, targets, create_graph=True)
    assert maps.requires_grad
    maps.sum().backward()
    head_weight = model.classifier[0].weight
    assert head_weight.grad is not None
    assert head_weight.grad.abs().sum() > 0
    assert not grad_cam(model, matched_layer(model), images, targets).requires_grad


def test_grad_cam_of_frozen_model_under_no_grad() -> None:
    model = build_model("resnet18", num_classes=4, image_size=32, width_divisor=8).eval()
    model.requires_grad_(False)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = grad_cam(model, matched_layer(model), images, torch.tensor([1, 2]))
    # Linear head: Grad-CAM is CAM, ReLU(sum_c W[y, c] A_c) / (h * w).
    features = model.layer4(
        model.layer3(
            model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(images))))))
        )
    )
    expected = torch.relu(torch.einsum("bc,bchw->bhw", model.fc.weight[[1, 2]], features)) / (
        features.shape[-1] * features.shape[-2]
    )
    torch.testing.assert_close(maps, expected)


def test_grad_cam_rejects_targets_of_wrong_shape() -> None:
    model, layer = _torchvision_model("resnet18")
    with pytest.raises(ValueError, match="targets: must hold one class index per image"):
        grad_cam(model, layer, torch.randn(2, 3, 32, 32), torch.tensor([1]))


def test_ewa_map_is_mean_square_over_channels() -> None:
    activations = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(ewa_map(activations), (activations**2).sum(1) / 5)


def test_swa_map_with_one_and_several_classes_and_drop_mask() -> None:
    activations = torch.randn(2, 6, 3, 3)
    weights = torch.randn(2, 4, 6)
    several = swa_map(activations, weights)
    assert several.shape == (2, 4, 3, 3)
    for k in range(4):
        torch.testing.assert_close(several[:, k], swa_map(activations, weights[:, k]))
    mask = torch.zeros(2, 4, 6)
    mask[..., 0] = 1
    # Only channel 0 kept: the map is ReLU(w_0 * A_0).
    only_first = torch.relu(weights[:, :, 0, None, None] * activations[:, None, 0])
    torch.testing.assert_close(swa_map(activations, weights, drop_mask=mask), only_first)


def test_channel_drop_mask_rate_and_validation() -> None:
    mask = channel_drop_mask((200, 512), 0.3, generator=torch.Generator().manual_seed(1))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(1 - mask.mean().item() - 0.3) < 0.01
    assert channel_drop_mask((4, 4), 0.0).eq(1).all()
    with pytest.raises(ValueError, match=r"drop_p: must be in \[0, 1\), got 1.0"):
        channel_drop_mask((2,), 1.0)


def test_upsample_maps_keeps_leading_dims() -> None:
    maps = torch.rand(2, 3, 7, 7)
    up = upsample_maps(maps, (28, 28))
    assert up.shape == (2, 3, 28, 28)
    torch.testing.assert_close(up[1, 2], upsample_maps(maps[1, 2][None], (28, 28))[0])
