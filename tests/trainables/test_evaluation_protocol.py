"""The official protocol's Grad-CAM layer, and its difficult objects, end to end on small nets.

Networks are width-divided (/32) so a 224-227 px forward pass is cheap on the CPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

import trainables.evaluation
from trainables.attribution import grad_cam
from trainables.data.voc import VOC_CLASSES, VOCMultiLabel
from trainables.evaluation import evaluate
from trainables.evaluation_protocol import (
    EVALUATION_PROTOCOLS,
    grad_cam_layer_name,
    grad_cam_view,
    protocol_dataset_options,
    whole_model,
)
from trainables.matching import MatchingConfig, matching_loss, teacher_targets
from trainables.models import SplitModel, build_model, forward_features, forward_head
from trainables.trial import TrialSetup, build_split, make_evaluator

PERSON = VOC_CLASSES.index("person")


def small_vgg(arch: str = "vgg16_bn", image_size: int = 227) -> nn.Module:
    return build_model(arch, num_classes=20, image_size=image_size, width_divisor=32).eval()


def predicting_everything(model: nn.Module) -> nn.Module:
    """A model whose every class is predicted (sigmoid > 0.5): its pairs are the positives."""
    last = model.classifier[-1]
    with torch.no_grad():
        last.weight.mul_(0.01)
        last.bias.fill_(6.0)
    return model


def test_the_layers_by_architecture_use_torchvisions_indices() -> None:
    assert grad_cam_layer_name(small_vgg(), layer="last_conv") == "features.42"
    assert grad_cam_layer_name(small_vgg("vgg11_bn"), layer="last_conv") == "features.27"
    assert grad_cam_layer_name(small_vgg(), layer="matched") == "features"
    # torchvision's own vgg16_bn (built on meta: no memory, no weights): the official code's
    # features._modules['42'] is the ReLU after conv5_3, and pool5 follows it.
    with torch.device("meta"):
        reference = torchvision.models.vgg16_bn()
    assert isinstance(reference.features[42], nn.ReLU)
    assert isinstance(reference.features[40], nn.Conv2d)
    assert isinstance(reference.features[43], nn.MaxPool2d)
    assert len(reference.features) == 44
    assert grad_cam_layer_name(reference, layer="last_conv") == "features.42"
    resnet = build_model("resnet18", num_classes=20, image_size=64, width_divisor=32)
    assert grad_cam_layer_name(resnet, layer="last_conv") == "layer4"
    assert grad_cam_view(resnet, layer="last_conv") is resnet


def test_a_split_model_and_an_unknown_layer_are_refused() -> None:
    split = SplitModel(nn.Identity(), nn.Identity())
    message = (
        "grad_cam_layer: 'last_conv' needs the whole network; a SplitModel (quantized) exists "
        "only split at its matched layer, got 'last_conv'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        grad_cam_view(split, layer="last_conv")
    assert grad_cam_view(split, layer="matched") is split
    with pytest.raises(
        ValueError,
        match=re.escape("grad_cam_layer: must be one of ['matched', 'last_conv'], got 'pool4'"),
    ):
        grad_cam_view(small_vgg(), layer="pool4")  # type: ignore[arg-type]


def test_official_grad_cam_of_vgg16_bn_at_227_px_is_14x14_and_the_loss_stays_at_7x7() -> None:
    model = small_vgg("vgg16_bn", 227)
    images = torch.randn(2, 3, 227, 227)
    view = grad_cam_view(model, layer="last_conv")
    assert view is not model
    assert whole_model(view) is model
    assert forward_features(view, images).shape[-2:] == (14, 14)
    assert forward_features(model, images).shape[-2:] == (7, 7)
    targets = torch.tensor([3, PERSON])
    at = view.get_submodule("features")  # what evaluation and the overlays explain
    assert grad_cam(view, at, images, targets).shape == (2, 14, 14)
    assert grad_cam(model, model.get_submodule("features"), images, targets).shape == (2, 7, 7)
    # The same network: same logits, the same parameters, nothing copied.
    with torch.no_grad():
        assert torch.equal(view(images), model(images))
        assert torch.equal(forward_head(view, forward_features(view, images)), model(images))
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.parameters()}
    # Training matches where it always did: the loss's maps come from the model itself.
    student = small_vgg("vgg16_bn", 227).train()
    features = forward_features(student, images)
    config = MatchingConfig(kind="swa")
    targets_t = teacher_targets(model, images, None, config)
    assert targets_t.maps.shape[-2:] == (7, 7)
    loss = matching_loss(student, features, forward_head(student, features), targets_t, config)
    assert loss.ndim == 0


def test_without_pool5_the_official_layer_has_the_matched_resolution() -> None:
    model = small_vgg("vgg16_bn", 64)  # input-size adaptation removed pool4 and pool5
    images = torch.randn(1, 3, 64, 64)
    view = grad_cam_view(model, layer="last_conv")
    assert forward_features(view, images).shape == forward_features(model, images).shape


def vgg_batches(root: Path, *, include_difficult: bool, size: int = 224) -> list[dict[str, Any]]:
    data = VOCMultiLabel(root, "seg_val", size, include_difficult=include_difficult)
    return list(DataLoader(torch.utils.data.Subset(data, range(4)), batch_size=2))


def test_evaluate_at_the_official_layer_keeps_task_metrics_and_moves_the_maps(
    voc2012_tree: Path,
) -> None:
    torch.manual_seed(1)
    model = predicting_everything(small_vgg("vgg11_bn", 224))
    teacher = small_vgg("vgg11_bn", 224)
    batches = vgg_batches(voc2012_tree, include_difficult=False)
    matched = evaluate(model, batches, teacher=teacher)
    official = evaluate(model, batches, teacher=teacher, grad_cam_layer="last_conv")
    for key in ("loss", "map", "f1", "pie_fraction"):
        assert official.metrics[key] == matched.metrics[key], key
    assert (official.per_sample["num_pairs"] == matched.per_sample["num_pairs"]).all()
    for key in ("attr_auc", "point_acc", "attr_cos"):
        assert official.metrics[key] == official.metrics[key], f"{key} is NaN"
    assert official.metrics["attr_auc"] != matched.metrics["attr_auc"]
    assert model.training is False  # restored as it was given (eval)


def test_under_official_a_difficult_only_class_is_positive_and_pairs(voc2012_tree: Path) -> None:
    setup = TrialSetup(
        dataset="voc2012",
        dataset_options={"root": str(voc2012_tree), "image_size": 128},
        num_classes=20,
        arch="vgg11_bn",
        teacher_width=32,
        epochs=1,
        eval_split="seg_val",
    )
    apc = build_split(setup, "seg_val", None)
    official = build_split(
        TrialSetup(**{**setup.__dict__, "evaluation_protocol": "official"}), "seg_val", None
    )
    assert isinstance(apc, VOCMultiLabel)
    assert isinstance(official, VOCMultiLabel)
    # The image with a difficult-only person: negative under apc, a masked positive officially.
    index = next(
        i
        for i in range(len(apc))
        if official.labels_of(i)[PERSON] == 1 and apc.labels_of(i)[PERSON] == 0
    )
    assert official[index]["masks"][PERSON].any()
    assert not apc[index]["masks"][PERSON].any()
    model = predicting_everything(small_vgg("vgg11_bn", 128))
    subset = [index]

    def pairs(data: VOCMultiLabel) -> tuple[int, float]:
        loader = DataLoader(torch.utils.data.Subset(data, subset), batch_size=1)
        result = evaluate(model, loader)
        return int(result.per_sample["num_pairs"][0]), result.metrics["attr_auc"]

    apc_pairs, _ = pairs(apc)
    official_pairs, official_auc = pairs(official)
    extra = int((official.labels_of(index) - apc.labels_of(index)).sum())
    assert extra >= 1
    assert official_pairs == apc_pairs + extra
    assert official_auc == official_auc  # scored: the difficult person's mask is non-empty


def test_the_evaluator_takes_grad_cam_where_the_protocol_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    def fake_evaluate(*_: object, grad_cam_layer: str, **__: object) -> Any:
        seen.append(grad_cam_layer)
        return trainables.evaluation.Evaluation(metrics={}, per_sample={})

    monkeypatch.setattr(trainables.evaluation, "evaluate", fake_evaluate)
    loader: DataLoader[Any] = DataLoader(torch.utils.data.TensorDataset(torch.zeros(0)))
    for protocol in ("apc", "official"):
        make_evaluator(loader, multi_label=True, protocol=protocol)(nn.Identity(), None)
    assert seen == ["matched", "last_conv"]


def test_protocol_data_options_apply_only_where_the_data_set_has_them() -> None:
    assert protocol_dataset_options("official", {"include_difficult", "root"}) == {
        "include_difficult": True
    }
    assert protocol_dataset_options("official", {"root"}) == {}
    assert protocol_dataset_options("apc", {"include_difficult"}) == {}
    assert set(EVALUATION_PROTOCOLS) == {"apc", "official"}
    with pytest.raises(
        ValueError,
        match=re.escape("evaluation protocol: must be one of ['apc', 'official'], got 'paper'"),
    ):
        protocol_dataset_options("paper", set())
