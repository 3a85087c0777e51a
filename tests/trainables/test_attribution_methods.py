"""Attribution methods for evaluation: library equality, hand-checked rules, shapes, batching."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from captum.attr import LRP, IntegratedGradients, LayerAttribution, LayerGradCam, LayerLRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule
from torch import Tensor, nn

from trainables import attribution_methods as am
from trainables.attribution_methods import (
    ATTRIBUTION_METHODS,
    excitation_backprop,
    grad_cam_map,
    integrated_gradients,
    lowered_logits,
    lrp,
    rap,
)
from trainables.models import build_model, matched_layer
from trainables.structured_pruning import prune_structured

SIZE = 32


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)


def _randomise_bn(model: nn.Module) -> nn.Module:
    # Non-trivial BN statistics and affine parameters, so a wrongly folded BN shows.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.2)
    return model


def _model(kind: str) -> nn.Module:
    if kind == "pruned_vgg":
        teacher = _randomise_bn(
            build_model("vgg11_bn", num_classes=5, image_size=SIZE, width_divisor=8)
        )
        return prune_structured(
            teacher.eval(), rate=0.5, image_size=SIZE, scheme="paper"
        ).model.eval()
    return _randomise_bn(build_model(kind, num_classes=5, image_size=SIZE, width_divisor=8)).eval()


def _target_logits(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    with torch.no_grad():
        logits: Tensor = model(images)
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def _captum_ready(model: nn.Module) -> nn.Module:
    """A copy captum's LRP can run on as it is: non-in-place ReLUs, alpha1-beta0 rules."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.rule = Alpha1_Beta0_Rule(set_bias_to_zero=True)
    return reference


def _plain_vgg() -> nn.Module:
    """A VGG on which LRP's canonicalisation changes nothing: no Identity pools (min feature
    size 1), BN at its initial identity statistics."""
    return build_model(
        "vgg11_bn", num_classes=5, image_size=SIZE, width_divisor=8, min_feature_size=1
    ).eval()


# --------------------------------------------------------------------------------------------
# Equal to the libraries


def test_grad_cam_map_is_captums_layer_grad_cam_upsampled() -> None:
    model = _model("vgg11_bn")
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 4])
    coarse = LayerGradCam(model, matched_layer(model)).attribute(
        images, target=targets, relu_attributions=True
    )
    reference = LayerAttribution.interpolate(coarse, (SIZE, SIZE), "bilinear").squeeze(1)
    torch.testing.assert_close(grad_cam_map(model, images, targets), reference)


def test_integrated_gradients_is_captums_summed_over_channels() -> None:
    model = _model("resnet18")
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 4])
    reference = IntegratedGradients(model).attribute(
        images, baselines=torch.zeros_like(images), target=targets, n_steps=50
    )
    torch.testing.assert_close(integrated_gradients(model, images, targets), reference.sum(dim=1))


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
def test_integrated_gradients_is_complete(arch: str) -> None:
    model = _model(arch)
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 3])
    maps = integrated_gradients(model, images, targets, n_steps=100)
    difference = _target_logits(model, images, targets) - _target_logits(
        model, torch.zeros_like(images), targets
    )
    torch.testing.assert_close(maps.sum(dim=(1, 2)), difference, rtol=0.02, atol=2e-3)


def test_lrp_is_captums_alpha1_beta0_where_no_canonicalisation_is_needed() -> None:
    # Non-negative images, no BN statistics to fold, no Identity modules: captum's LRP runs on
    # (a copy of) the model itself.
    model = _plain_vgg()
    images, targets = torch.rand(3, 3, SIZE, SIZE), torch.tensor([0, 2, 4])
    reference = (
        LRP(_captum_ready(model))
        .attribute(images.clone().requires_grad_(), target=targets)
        .sum(dim=1)
    )
    ours = lrp(model, images, targets)
    assert reference.abs().max() > 0
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6 * reference.abs().max().item())


def test_excitation_backprop_is_captums_alpha1_beta0_over_the_logit_at_the_first_layer() -> None:
    # EBP's winning probabilities are LRP's z+ relevances divided by the target logit.
    model = _plain_vgg()
    images, targets = torch.randn(3, 3, SIZE, SIZE), torch.tensor([0, 2, 4])
    reference_model = _captum_ready(model)
    relevance = LayerLRP(reference_model, reference_model.features[0]).attribute(
        images.clone().requires_grad_(), target=targets
    )
    reference = relevance.sum(dim=1) / _target_logits(model, images, targets).view(-1, 1, 1)
    torch.testing.assert_close(
        excitation_backprop(model, images, targets), reference, rtol=1e-4, atol=1e-7
    )


class _AlphaBetaByHand:
    """LRP alpha1-beta0 written out on the lowered model, to check what captum is given."""

    def output(self, layer: am._Affine, x: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        start = torch.nn.functional.one_hot(targets, logits.shape[1]) * logits
        return am._positive_contributions(layer, x, start)

    def hidden(self, layer: am._Affine, x: Tensor, relevance: Tensor) -> Tensor:
        return am._positive_contributions(layer, x, relevance)

    def add(self, a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
        share = am._safe_div(relevance, a + b)
        return a * share, b * share

    def pixel(self, layer: am._Affine, x: Tensor, relevance: Tensor) -> Tensor:
        # z+_ij = (x_i w_ij)+ = x+_i w+_ij + x-_i w-_ij.
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        wp, wn = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
        s = am._safe_div(relevance, layer.apply(xp, wp) + layer.apply(xn, wn))
        return xp * am._vjp(lambda v: layer.apply(v, wp), xp, s) + xn * am._vjp(
            lambda v: layer.apply(v, wn), xn, s
        )


@pytest.mark.parametrize("kind", ["vgg11_bn", "resnet18", "resnet50"])
def test_lrp_by_captum_on_the_canonical_copy_is_alpha1_beta0_with_proportional_residual_split(
    kind: str,
) -> None:
    model = _model(kind)
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 3])
    by_hand = am._propagate(model, images, targets, _AlphaBetaByHand(), to_pixels=True).sum(dim=1)
    ours = lrp(model, images, targets)
    torch.testing.assert_close(ours, by_hand, rtol=1e-4, atol=1e-5 * by_hand.abs().max().item())


# --------------------------------------------------------------------------------------------
# Hand-checked rules on tiny networks


def _linear(*rows: list[float]) -> nn.Linear:
    weight = torch.tensor(rows, dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def _pixels(*values: float) -> Tensor:
    """One image [1, 1, 1, len(values)]."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_lrp_alpha1_beta0_conserves_relevance_on_a_bias_free_relu_net_by_hand() -> None:
    net = nn.Sequential(
        nn.Flatten(), _linear([1, -1, 0.5], [-1, 0.5, 1]), nn.ReLU(), _linear([1, 2], [0.5, 0.5])
    )
    images = torch.cat([_pixels(1, -2, 3), _pixels(2, 1, -1)])
    # Image 0, class 0: h = ReLU(W1 x) = [4.5, 1], logit 4.5 + 2 = 6.5. Both contributions are
    # positive: R_h = [4.5, 2]. Pixels: h0's contributions x_i w_i = [1, 2, 1.5] (x_1 < 0 times
    # w < 0 counts as positive), all its 4.5; h1's are [-1, -1, 3], only the last positive, so
    # all its 2 goes to pixel 2. R_x = [1, 2, 1.5 + 2].
    # Image 1, class 1: h = [2 - 1 - 0.5, ReLU(-2 + 0.5 - 1)] = [0.5, 0], logit 0.25 = R_h0;
    # h0's contributions [2, -1, -0.5]: all to pixel 0.
    maps = lrp(net, images, torch.tensor([0, 1]))
    expected = torch.tensor([[[1.0, 2.0, 3.5]], [[0.25, 0.0, 0.0]]])
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.tensor([6.5, 0.25]))


def test_excitation_backprop_on_a_tiny_network_by_hand() -> None:
    conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    net = nn.Sequential(
        conv,
        nn.ReLU(),
        nn.Flatten(),
        _linear([-1, 0, 0, 2], [2, 0, 0, 0.5]),
        nn.ReLU(),
        _linear([2, 1], [-1, 3]),
    )
    images = torch.cat([_pixels(1, -2), _pixels(1, -2)])
    # First layer (channels x pixels, flattened c0p0, c0p1, c1p0, c1p1): ReLU([1, -2]) = [1, 0]
    # and ReLU([-1, 2]) = [0, 2]: h = [1, 0, 0, 2]. Second: g = [-1 + 4, 2 + 1] = [3, 3].
    # Class 0 (weights [2, 1]): P(g) = [6, 3] / 9. From g0 (w+ = [0, 0, 0, 2]) all to c1p1;
    # from g1 (w+ = [2, 0, 0, 0.5]: contributions [2, 0, 0, 1]) 2/3 to c0p0, 1/3 to c1p1:
    # P(h) = [1/3 * 2/3, 0, 0, 2/3 + 1/3 * 1/3] = [2/9, 0, 0, 7/9]; map = per pixel [2/9, 7/9].
    # Class 1 (weights [-1, 3]): only g1 excites it, P(g) = [0, 1]: map [2/3, 1/3].
    maps = excitation_backprop(net, images, torch.tensor([0, 1]))
    expected = torch.tensor([[[2 / 9, 7 / 9]], [[2 / 3, 1 / 3]]])
    torch.testing.assert_close(maps, expected)


def test_rap_on_a_tiny_network_by_hand() -> None:
    net = nn.Sequential(
        nn.Flatten(),
        _linear([1, -1, 0.5], [-1, 0.5, 1]),
        nn.ReLU(),
        _linear([1, -1], [2 / 9, 1]),
        nn.ReLU(),
        _linear([2, -1], [1, 1], [-1, 0.5]),
    )
    images = _pixels(1, -2, 3).expand(3, -1, -1, -1)
    # h = ReLU(W1 x) = [4.5, 1]; g = ReLU(W2 h) = [4.5 - 1, 1 + 1] = [3.5, 2];
    # logits = [7 - 2, 3.5 + 2, -3.5 + 1] = [5, 5.5, -2.5].
    # Image layer, z^B with l = -2, h = 3: Z_h0 terms x w - l w+ - h w- = [3, 5, 2.5] (10.5),
    # Z_h1 terms [2, 0, 5] (7).
    zb_h0 = torch.tensor([3.0, 5.0, 2.5]) / 10.5
    zb_h1 = torch.tensor([2.0, 0.0, 5.0]) / 7
    # Class 0. Absolute influence: c = [7, -2], R_g = [7, 2] / 9 * 5 = [35/9, 10/9].
    # Middle layer: g0 (w [1, -1], P = 4.5, N = 1): h0 gets 35/9, h1 (inhibitor) gets
    # 35/9 / 5.5 = 70/99; g1 (w [2/9, 1], P = 2): h0 gets 1 * 10/9 / 2 = 5/9, h1 the same.
    # Spread [40/9, 125/99] sums to 565/99, 70/99 over 5: shifted by 35/99 each,
    # R_h = [405/99, 90/99] = [45/11, 10/11].
    class0 = 45 / 11 * zb_h0 + 10 / 11 * zb_h1  # [10/7, 150/77, 125/77]
    # Class 1. c = [3.5, 2] (sum 5.5 = the logit): R_g = [3.5, 2]. g0: h0 gets 3.5, h1 gets
    # 3.5 / 5.5 = 7/11; g1: h0 and h1 get 1 each. Spread [4.5, 18/11], 7/11 over 5.5:
    # shifted by 7/22 each, R_h = [46/11, 29/22].
    class1 = 46 / 11 * zb_h0 + 29 / 22 * zb_h1
    # Class 2, a negative logit: c = [-3.5, 1], R_g = [3.5, 1] / 4.5 * -2.5 = [-35/18, -5/9],
    # all irrelevant. g0's goes to its inhibitor h1 only: -35/18 * (1/5.5 + 1/1) = -455/198;
    # g1 has no inhibitor and passes nothing. Shifting the missing 40/198 onto h1, the only
    # neuron that received some: R_h = [0, -2.5].
    class2 = -2.5 * zb_h1  # [-5/7, 0, -25/14]
    maps = rap(net, images, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(maps, torch.stack([class0, class1, class2]).unsqueeze(1))
    torch.testing.assert_close(class0, torch.tensor([10 / 7, 150 / 77, 125 / 77]))
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.tensor([5.0, 5.5, -2.5]))


# --------------------------------------------------------------------------------------------
# Every method on VGG, ResNet and a pruned VGG


MODELS = ["vgg11_bn", "resnet18", "pruned_vgg"]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return {kind: _model(kind) for kind in MODELS}


@pytest.mark.parametrize("kind", MODELS)
def test_lowered_model_computes_the_models_logits(kind: str, models: dict[str, nn.Module]) -> None:
    model = models[kind]
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = model(images)
    torch.testing.assert_close(lowered_logits(model, images), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_maps_have_image_shape_are_finite_and_batch_equals_single_images(
    kind: str, name: str, models: dict[str, nn.Module]
) -> None:
    model, method = models[kind], ATTRIBUTION_METHODS[name]
    images, targets = torch.randn(3, 3, SIZE, SIZE), torch.tensor([0, 2, 4])
    maps = method(model, images, targets)
    assert maps.shape == (3, SIZE, SIZE)
    assert maps.dtype == images.dtype
    assert torch.isfinite(maps).all()
    assert maps.abs().max() > 0  # (a random net's Grad-CAM can be all zero for one image)
    singles = torch.cat([method(model, images[i : i + 1], targets[i : i + 1]) for i in range(3)])
    # Float rounding differs between batch sizes; RAP's residual split a / (a + b) amplifies it.
    scale = maps.abs().max().item() * (1e-3 if name == "rap" and kind == "resnet18" else 1e-5)
    torch.testing.assert_close(maps, singles, rtol=1e-4, atol=scale)


@pytest.mark.parametrize("kind", MODELS)
def test_propagation_methods_conserve_relevance(kind: str, models: dict[str, nn.Module]) -> None:
    model = models[kind]
    images, targets = torch.randn(3, 3, SIZE, SIZE), torch.tensor([0, 2, 4])
    logits = _target_logits(model, images, targets)
    atol = 1e-4 * logits.abs().max().item()
    lrp_maps = lrp(model, images, targets)
    # alpha1-beta0 drops the relevance of a neuron without positive contributions: in VGG one
    # active through its bias alone, in a ResNet also a negative branch output a to which the
    # residual split a R / (a + b) gives relevance.
    lrp_rtol = 1e-2 if kind == "resnet18" else 1e-3
    torch.testing.assert_close(lrp_maps.sum(dim=(1, 2)), logits, rtol=lrp_rtol, atol=atol)
    # RAP's shifting restores what a layer loses.
    torch.testing.assert_close(
        rap(model, images, targets).sum(dim=(1, 2)), logits, rtol=1e-3, atol=atol
    )
    ebp_maps = excitation_backprop(model, images, targets)
    assert ebp_maps.min() >= 0
    if kind != "resnet18":
        # Probability 1 at the first layer (VGG: at image resolution, nothing upsampled).
        torch.testing.assert_close(ebp_maps.sum(dim=(1, 2)), torch.ones(3), rtol=1e-4, atol=1e-4)
        # Positive relevance only: each LRP map has its logit's sign.
        assert (lrp_maps * logits.sign().view(-1, 1, 1)).min() >= 0


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[bool], list[set[str]]]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()], [set(vars(m)) for m in model.modules()]


@pytest.mark.parametrize("kind", ["vgg11_bn", "resnet18"])
@pytest.mark.parametrize("training", [False, True])
def test_methods_leave_the_model_unchanged(
    kind: str, training: bool, models: dict[str, nn.Module]
) -> None:
    model = copy.deepcopy(models[kind]).train(training)
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 3])
    # Gradient methods differentiate the model as it is (a train-mode forward updates the BN
    # statistics, the caller's choice); the propagation methods explain it in eval semantics.
    names = ["lrp", "ebp", "rap"] if training else sorted(ATTRIBUTION_METHODS)
    before = _snapshot(model)
    for name in names:
        ATTRIBUTION_METHODS[name](model, images, targets)
    after = _snapshot(model)
    assert after[1:] == before[1:]
    assert after[0].keys() == before[0].keys()
    for key, value in before[0].items():
        assert torch.equal(after[0][key], value), key
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        assert not module._backward_hooks


def test_propagation_methods_explain_the_eval_function_in_either_mode(
    models: dict[str, nn.Module],
) -> None:
    model = models["vgg11_bn"]
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 3])
    for method in (lrp, excitation_backprop, rap):
        evaluated = method(model, images, targets)
        trained = method(copy.deepcopy(model).train(), images, targets)
        torch.testing.assert_close(trained, evaluated)


def test_registry_names_and_target_validation() -> None:
    assert set(ATTRIBUTION_METHODS) == {"grad_cam", "integrated_gradients", "lrp", "ebp", "rap"}
    model = _model("vgg11_bn")
    for method in ATTRIBUTION_METHODS.values():
        with pytest.raises(ValueError, match="targets: must hold one class index per image"):
            method(model, torch.randn(2, 3, SIZE, SIZE), torch.tensor([1]))


def test_unsupported_modules_are_rejected() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(TypeError, match="module GELU is not supported"):
        rap(net, torch.randn(1, 3, 8, 8), torch.tensor([0]))
